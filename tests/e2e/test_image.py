"""The container image: `scripts/image.sh build` then `scripts/image.sh smoke`, as `make image`
and `make image-smoke` run them, on a Bento of the session's small trained model.

Minutes the first time: the Debian base image is made once (mmdebstrap) and the Python
environment's layers are cached in the buildah storage (/var/lib/gamerec-image); then about
half a minute, as long as the Bento's requirements stay the same.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time

import pytest

from tests.servers import BENTOML, PROJECT_ROOT

SCRIPT = PROJECT_ROOT / "scripts" / "image.sh"
NAME = "gamerec-test"  # not the `make image` name, whose images the test leaves alone


def _why_not() -> str | None:
    if os.geteuid() != 0:
        return "needs root (buildah with chroot isolation)"
    missing = [tool for tool in ("buildah", "mmdebstrap") if shutil.which(tool) is None]
    if missing:
        return f"{' and '.join(missing)} not installed (apt-get install buildah mmdebstrap)"
    return None


WHY_NOT = _why_not()
pytestmark = [pytest.mark.slow, pytest.mark.skipif(WHY_NOT is not None, reason=str(WHY_NOT))]


def _image_sh(*args: str, env: dict[str, str], timeout: float) -> str:
    """Run scripts/image.sh; its stdout, or the test fails with the end of its output."""
    started = time.monotonic()
    done = subprocess.run(
        ["bash", str(SCRIPT), *args],
        cwd=PROJECT_ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    print(f"scripts/image.sh {args[0]}: {time.monotonic() - started:.0f} s")
    assert done.returncode == 0, f"{done.stdout[-4000:]}\n{done.stderr[-4000:]}"
    return done.stdout


def test_image_serves_the_model_built_into_the_bento(trained):
    env = {
        **os.environ,  # with the tests' private BENTOML_HOME, where `trained` lies
        "GAMEREC_MODEL_TAG": trained.tag,  # the Bento `image.sh build` makes pins this model
        "GAMEREC_IMAGE_NAME": NAME,
        "BENTOML": BENTOML,
        "PYTHON": sys.executable,
    }
    built = _image_sh("build", env=env, timeout=1500)
    image = built.splitlines()[-1].removeprefix("image: ")
    assert image.startswith(f"localhost/{NAME}:"), built[-2000:]
    try:
        smoke = _image_sh("smoke", image, env=env, timeout=600)
        assert f"10 recommendations from {trained.tag}" in smoke, smoke
        assert "smoke test passed" in smoke
    finally:
        # Only its versioned name (NAME:latest keeps the image, so rmi only untags): the layers
        # of its Python environment stay for the next build, which removes this image.
        _image_sh("buildah", "rmi", image, env=env, timeout=300)
