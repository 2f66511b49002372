import sys
import textwrap

import pytest

from dfbench import registry as registry_module
from dfbench.errors import DfbenchInputError, UnknownNameError
from dfbench.registry import Registry


def test_decorator_and_direct_registration():
    reg = Registry("widget")

    @reg.register("alpha")
    def alpha():
        return 1

    reg.register("beta", 2)
    assert reg.get("alpha") is alpha
    assert reg.get("beta") == 2
    assert reg.names() == ["alpha", "beta"]
    assert "alpha" in reg and "gamma" not in reg


def test_lazy_registration_imports_on_first_use():
    reg = Registry("widget")
    reg.register("ordered", "collections:OrderedDict")
    from collections import OrderedDict

    assert reg.get("ordered") is OrderedDict


def test_glob_listing():
    reg = Registry("widget")
    for name in ("tiny-sd15", "tiny-sdxl", "sd15"):
        reg.register(name, object())
    assert reg.names("tiny-*") == ["tiny-sd15", "tiny-sdxl"]
    assert reg.names("*15") == ["sd15", "tiny-sd15"]


def test_duplicate_needs_override():
    reg = Registry("widget")
    reg.register("a", 1)
    with pytest.raises(ValueError, match="already registered"):
        reg.register("a", 2)
    reg.register("a", 3, override=True)
    assert reg.get("a") == 3


def test_unknown_name_suggests_closest():
    reg = Registry("backbone")
    for name in ("sd15", "sd21", "sdxl", "tiny-sd15"):
        reg.register(name, object())
    with pytest.raises(UnknownNameError) as info:
        reg.get("sd-15")
    message = str(info.value)
    assert "unknown backbone 'sd-15'" in message
    assert "did you mean: sd15" in message
    assert isinstance(info.value, DfbenchInputError)


def test_entry_point_plugins(tmp_path, monkeypatch):
    """A third-party package registers through the `dfbench.plugins` entry-point group."""
    (tmp_path / "my_dfbench_plugin.py").write_text(textwrap.dedent("""
        from dfbench.registry import BACKBONES

        def register():
            BACKBONES.register("plugin-backbone", "my_dfbench_plugin:factory", override=True)

        def factory(**kwargs):
            from toy_plugin import ToyCNN

            backbone = ToyCNN()
            backbone.kwargs = kwargs
            return backbone
    """))
    dist = tmp_path / "my_dfbench_plugin-1.0.dist-info"
    dist.mkdir()
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: my-dfbench-plugin\nVersion: 1.0\n")
    (dist / "entry_points.txt").write_text("[dfbench.plugins]\nmine = my_dfbench_plugin:register\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.setattr(registry_module, "_plugins_loaded", False)
    try:
        assert "plugin-backbone" in registry_module.BACKBONES.names()
        assert registry_module.create_backbone("plugin-backbone", x=1).kwargs == {"x": 1}
    finally:
        registry_module.BACKBONES._entries.pop("plugin-backbone", None)
        registry_module.BACKBONES._lazy.pop("plugin-backbone", None)
        sys.modules.pop("my_dfbench_plugin", None)


def test_builtin_backbones_are_registered():
    assert {"sd15", "sd21", "sd21-base", "sdxl", "tiny-sd15", "tiny-sd21", "tiny-sdxl"} <= set(
        registry_module.BACKBONES.names()
    )
