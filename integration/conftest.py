import pytest

from integration.helpers import unique_lab_name


@pytest.fixture(scope="module")
def lab_name():
    return unique_lab_name("t")
