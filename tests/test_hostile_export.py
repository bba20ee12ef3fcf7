"""Hostile export inputs refused in one line (issue 20 item 5)."""

import pytest

from export.keras_loading import load_keras_model
from runtime.errors import RoiedgeError


@pytest.mark.parametrize("code", ["import sys\nsys.exit(0)\n", "raise SystemExit(3)\n"])
def test_custom_objects_exit_is_an_error(tmp_path, code):
    custom = tmp_path / "custom.py"
    custom.write_text(code)
    model = tmp_path / "m.keras"
    model.write_bytes(b"not read: the custom objects are imported first")
    with pytest.raises(RoiedgeError) as info:
        load_keras_model(model, [custom], "RoiPoolingConv", 2)
    assert "sys.exit" in str(info.value) and "\n" not in str(info.value)
