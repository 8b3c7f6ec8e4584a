import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))


@pytest.fixture(scope="session")
def default_model_path():
    import sinkstream

    return sinkstream.default_model_path()
