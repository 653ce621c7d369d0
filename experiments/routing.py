from django.urls import path

from .consumers import PlaygroundConsumer, RunEventsConsumer

websocket_urlpatterns = [
    path("ws/runs/<int:run_id>/", RunEventsConsumer.as_asgi()),
    path("ws/playground/<int:session_id>/", PlaygroundConsumer.as_asgi()),
]
