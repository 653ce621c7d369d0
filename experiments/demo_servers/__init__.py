"""The bundled demo tool server and grader server, speaking rftweb's wire formats.

Run it with ``python -m experiments.demo_servers --port 8765 [--host 127.0.0.1] [--signing-secret S]``
(the secret may also come from ``RFT_DEMO_SIGNING_SECRET``); tests use ``DemoServer(...).start()``.

Endpoints
---------
``GET  /tools``                 the tools as OpenAI function definitions (a JSON list); each tool is
                                served at ``POST /tools/<name>``.
``POST /tools/<name>``          a tool call in the agent-RFT wire format
                                (``{"type": "function_call", "call_id", "name", "arguments", "item",
                                "trace_id"}``); answers ``{"type": "function_call_output", "call_id",
                                "output"}``. Bad arguments get a 4xx ``{"error": "..."}`` that the
                                model reads.
``GET  /rollouts/<trace_id>``   the calls seen for one rollout (keyed by ``X-RFT-Rollout-Id``):
                                ``{"trace_id", "count", "calls": [{"tool", "call_id", "arguments", "at"}]}``.
``POST /grade``                 ``{"sample", "item", "trace_id"}`` -> ``{"score"}``: with
                                ``item.reference_files`` the F1 of the repository paths named in
                                ``sample.output_text`` (plus ``precision``, ``recall``); otherwise 1.0
                                when ``item.answer`` occurs in the output text (case and spacing
                                ignored), else 0.0.
``GET  /healthz``               ``{"ok": true}``.

With a signing secret every POST must carry a valid ``X-RFT-Signature`` (else 401).

Tools
-----
``calculator {"expression": str}``  arithmetic (``+ - * / ^``, parentheses, min max abs floor ceil exp
    sqrt log, constants pi and e) -> the number as text, integers without ".0":
    ``"3 * 4.99 + 2 * 5.49"`` -> ``"25.95"``.
``lookup {"key": str}``  a product code -> ``{"key", "name", "price_usd"}`` as JSON text; an unknown
    code is a 404 naming the valid range. The table (``data.PRODUCTS``):

    ========  =======================  ==========
    code      name                     price_usd
    ========  =======================  ==========
    SKU-1001  Blue widget              4.99
    SKU-1002  Red widget               5.49
    SKU-1003  Green gadget             12.00
    SKU-1004  Steel bolt (pack of 50)  7.25
    SKU-1005  Copper wire, 10 m        18.40
    SKU-1006  LED strip, 2 m           23.90
    SKU-1007  Soldering iron           39.00
    SKU-1008  Multimeter               54.50
    SKU-1009  Screwdriver set          21.75
    SKU-1010  Safety glasses           8.60
    SKU-1011  Work gloves              11.30
    SKU-1012  Toolbox                  46.00
    ========  =======================  ==========

``list_files {"directory": str}``  the files under a directory of the fake repository, recursively,
    one per line (``"."`` is the root); an unknown directory is a 404.
``grep {"pattern": str}``  a regular expression over every line of the fake repository ->
    ``path:line: text`` lines, or ``no matches``.
``peek {}``  the quick demo's toy tool (``trainer/toy.py``): the rollout's ``item.answer`` (a secret
    colour) as a "swatch", the colour on eight lines; a call without the item is a 400.

The fake repository (``data.REPOSITORY``, a toy "shop" package) has these files::

    README.md  docs/usage.md
    src/shop/__init__.py  src/shop/config.py  src/shop/pricing.py  src/shop/cart.py
    src/shop/checkout.py  src/shop/invoice.py  src/shop/utils.py
    tests/test_cart.py  tests/test_invoice.py

Tasks with known answers ("which files need editing?", scored by set F1 against
``reference_files``):

- rename ``compute_total`` -> README.md, docs/usage.md, src/shop/pricing.py, src/shop/cart.py,
  src/shop/checkout.py, tests/test_cart.py
- change how ``TAX_RATE`` is defined or used -> src/shop/config.py, src/shop/checkout.py,
  src/shop/invoice.py
- rename ``format_price`` -> docs/usage.md, src/shop/invoice.py, src/shop/utils.py
- rename ``CURRENCY`` -> src/shop/config.py, src/shop/pricing.py, src/shop/utils.py
- resolve the ``TODO``/``FIXME`` comments -> src/shop/pricing.py, src/shop/invoice.py
"""

from experiments.demo_servers.app import TOOL_DEFINITIONS, TOOL_NAMES, DemoServer, grade_rollout
from experiments.demo_servers.data import PRODUCTS, REPOSITORY

__all__ = ["PRODUCTS", "REPOSITORY", "TOOL_DEFINITIONS", "TOOL_NAMES", "DemoServer", "grade_rollout"]
