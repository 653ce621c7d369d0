"""factory_boy factories for the data model (shared by every test module)."""

from __future__ import annotations

import factory
from django.contrib.auth import get_user_model

from experiments.models import Dataset, DatasetItem, Grader, Run, Tool


class UserFactory(factory.django.DjangoModelFactory):
    class Meta:
        model = get_user_model()
        django_get_or_create = ("username",)

    username = factory.Sequence(lambda n: f"user{n}")
    password = factory.django.Password("correct horse battery staple")


class DatasetFactory(factory.django.DjangoModelFactory):
    class Meta:
        model = Dataset

    owner = factory.SubFactory(UserFactory)
    name = factory.Sequence(lambda n: f"dataset-{n}")
    split = "train"
    item_count = 0


class DatasetItemFactory(factory.django.DjangoModelFactory):
    class Meta:
        model = DatasetItem

    dataset = factory.SubFactory(DatasetFactory)
    index = factory.Sequence(lambda n: n)
    line_number = factory.LazyAttribute(lambda item: item.index + 1)
    data = factory.LazyAttribute(
        lambda item: {
            "messages": [{"role": "user", "content": f"question {item.index}"}],
            "answer": str(item.index),
        }
    )
    message_count = 1


class ToolFactory(factory.django.DjangoModelFactory):
    class Meta:
        model = Tool

    owner = factory.SubFactory(UserFactory)
    name = factory.Sequence(lambda n: f"tool_{n}")
    description = "Looks something up."
    parameters = factory.LazyFunction(
        lambda: {"type": "object", "properties": {"key": {"type": "string"}}, "required": ["key"]}
    )
    url = "http://127.0.0.1:9/tool"
    headers = factory.LazyFunction(dict)


class GraderFactory(factory.django.DjangoModelFactory):
    class Meta:
        model = Grader

    owner = factory.SubFactory(UserFactory)
    name = factory.Sequence(lambda n: f"grader-{n}")
    type = "string_check"
    spec = factory.LazyAttribute(
        lambda grader: {
            "type": "string_check",
            "name": grader.name,
            "input": "{{sample.output_text}}",
            "reference": "{{item.answer}}",
            "operation": "eq",
        }
    )


class RunFactory(factory.django.DjangoModelFactory):
    class Meta:
        model = Run

    owner = factory.SubFactory(UserFactory)
    name = factory.Sequence(lambda n: f"run-{n}")
    base_model = "tiny-local"
    config = factory.LazyFunction(lambda: {"learning_rate": 1e-5, "group_size": 4})
    train_dataset = factory.SubFactory(DatasetFactory, owner=factory.SelfAttribute("..owner"))
    grader = factory.SubFactory(GraderFactory, owner=factory.SelfAttribute("..owner"))
