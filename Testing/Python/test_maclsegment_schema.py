"""The label schema typed in the module's panel: the cardiac labels keep the heart's post-processing."""

import pytest

pytest.importorskip("maclcore", reason="MACLCore is not installed")

from maclcore.labels import CARDIAC  # noqa: E402
from MACLSegmentLib.schema import formatSchemaText, parseSchemaText  # noqa: E402


def test_the_cardiac_labels_in_any_colours_are_one_object_and_others_are_not():
    shown = parseSchemaText(formatSchemaText(CARDIAC))
    assert shown.names == CARDIAC.names and shown.one_object  # colours go through #rrggbb and round
    assert shown.wall_encloses == CARDIAC.wall_encloses
    recoloured = parseSchemaText("rv cavity #112233\nLV Myocardium #445566\nLV cavity")
    assert recoloured.one_object and recoloured.names == ("rv cavity", "LV Myocardium", "LV cavity")
    assert not parseSchemaText("RV cavity #112233\nLV cavity #445566").one_object
    assert not parseSchemaText("liver #ff0000\nspleen #00ff00\nkidney").one_object
    assert parseSchemaText("liver #ff0000\nspleen #00ff00\nkidney").wall_encloses is None
