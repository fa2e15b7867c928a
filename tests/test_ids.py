import pytest

from migratio import ids
from migratio.errors import InvalidInput


def test_image_id_is_canonical_lower_case():
    assert ids.image_id("0F8E2C4A-1B2C-4D5E-8F90-123456789ABC") == "0f8e2c4a-1b2c-4d5e-8f90-123456789abc"


@pytest.mark.parametrize("bad", ["$(touch /tmp/x)", "../../etc/passwd", "", None, 42,
                                 "0f8e2c4a1b2c4d5e8f90123456789abc", "{0f8e2c4a-1b2c-4d5e-8f90-123456789abc}",
                                 "0f8e2c4a-1b2c-4d5e-8f90-123456789abc\n"])
def test_bad_image_ids_are_rejected(bad):
    with pytest.raises(InvalidInput, match="invalid image id"):
        ids.image_id(bad)


@pytest.mark.parametrize("good", ["cyfronet-folkstack", "amazon", "site_b.2"])
def test_site_ids(good):
    assert ids.site_id(good) == good


@pytest.mark.parametrize("bad", ["../x", "a/b", "..", ".", "", "a b", "x;rm", None])
def test_bad_site_ids_are_rejected(bad):
    with pytest.raises(InvalidInput, match="invalid site id"):
        ids.site_id(bad)
