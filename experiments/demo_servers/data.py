"""The fixed data the demo tools serve: a product price table and a small fake repository.

Dataset authors write example tasks against these; tests check that the answers documented in the
package docstring still hold.
"""

from __future__ import annotations

# Product code -> (name, unit price in USD). Codes are SKU-1001 .. SKU-1012.
PRODUCTS: dict[str, tuple[str, float]] = {
    "SKU-1001": ("Blue widget", 4.99),
    "SKU-1002": ("Red widget", 5.49),
    "SKU-1003": ("Green gadget", 12.00),
    "SKU-1004": ("Steel bolt (pack of 50)", 7.25),
    "SKU-1005": ("Copper wire, 10 m", 18.40),
    "SKU-1006": ("LED strip, 2 m", 23.90),
    "SKU-1007": ("Soldering iron", 39.00),
    "SKU-1008": ("Multimeter", 54.50),
    "SKU-1009": ("Screwdriver set", 21.75),
    "SKU-1010": ("Safety glasses", 8.60),
    "SKU-1011": ("Work gloves", 11.30),
    "SKU-1012": ("Toolbox", 46.00),
}

# A tiny fake Python project ("shop"). Paths are POSIX, relative to the repository root.
REPOSITORY: dict[str, str] = {
    "README.md": (
        "# shop\nA toy shop backend. Totals are computed by compute_total in src/shop/pricing.py.\n"
    ),
    "docs/usage.md": (
        "# Usage\nCall compute_total(cart) to get the amount due.\nPrices are shown with format_price.\n"
    ),
    "src/shop/__init__.py": '"""The shop package."""\n',
    "src/shop/config.py": 'TAX_RATE = 0.2\nCURRENCY = "USD"\n',
    "src/shop/pricing.py": (
        "from shop.config import CURRENCY\n"
        "\n"
        "\n"
        "def compute_total(cart):\n"
        "    return sum(line.price * line.quantity for line in cart.lines)\n"
        "\n"
        "\n"
        "def apply_discount(amount, percent):\n"
        "    # TODO: refuse percentages above 100\n"
        "    return amount * (1 - percent / 100)\n"
    ),
    "src/shop/cart.py": (
        "from shop.pricing import compute_total\n"
        "\n"
        "\n"
        "class Cart:\n"
        "    def __init__(self):\n"
        "        self.lines = []\n"
        "\n"
        "    def total(self):\n"
        "        return compute_total(self)\n"
    ),
    "src/shop/checkout.py": (
        "from shop.config import TAX_RATE\n"
        "from shop.pricing import compute_total\n"
        "\n"
        "\n"
        "def amount_due(cart):\n"
        "    return compute_total(cart) * (1 + TAX_RATE)\n"
    ),
    "src/shop/invoice.py": (
        "from shop.config import TAX_RATE\n"
        "from shop.utils import format_price\n"
        "\n"
        "\n"
        "def invoice_line(amount):\n"
        "    # FIXME: round before formatting\n"
        "    return format_price(amount * TAX_RATE)\n"
    ),
    "src/shop/utils.py": (
        "from shop.config import CURRENCY\n"
        "\n"
        "\n"
        "def format_price(amount):\n"
        '    return f"{amount:.2f} {CURRENCY}"\n'
    ),
    "tests/test_cart.py": (
        "from shop.cart import Cart\n"
        "from shop.pricing import compute_total\n"
        "\n"
        "\n"
        "def test_empty_cart_total():\n"
        "    assert compute_total(Cart()) == 0\n"
    ),
    "tests/test_invoice.py": (
        "from shop.invoice import invoice_line\n"
        "\n"
        "\n"
        "def test_invoice_line():\n"
        '    assert invoice_line(10).endswith("USD")\n'
    ),
}
