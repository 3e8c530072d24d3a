"""A run's decoded volumes: kept by ingest, read back by preprocess, never stale, never left behind."""

from __future__ import annotations

import os
import subprocess
import sys

import numpy as np
import pytest

from medflow.data import decoded
from medflow.data.images import read_image
from medflow.data.nifti import read_nifti
from tests.helpers import make_affine, save


@pytest.fixture
def nifti(tmp_path):
    data = np.arange(4 * 5 * 6, dtype=np.int16).reshape(4, 5, 6)
    path = tmp_path / "a.nii.gz"
    save(path, data, make_affine(), np.int16)
    return path


def test_kept_volume_reads_back_as_decoded(tmp_path, nifti):
    vol = read_image(nifti)
    with decoded.session(tmp_path / "tmp") as root:
        assert decoded.put(root, vol, decoded.image_role({}), share=1 << 20)
        back = decoded.get(root, str(nifti), decoded.image_role({}))
        assert back is not None and back.path == str(nifti) and back.nbytes_file == vol.nbytes_file
        assert back.data.dtype == vol.data.dtype and back.data.flags.f_contiguous == vol.data.flags.f_contiguous
        np.testing.assert_array_equal(back.data, vol.data)
        np.testing.assert_array_equal(back.affine, vol.affine)
        assert decoded.get(root, str(nifti), decoded.image_role({"allow_tilt": True})) is None  # another read
        assert decoded.get(root, str(nifti), decoded.LABEL) is None


def test_a_rewritten_file_is_decoded_again(tmp_path, nifti):
    vol = read_image(nifti)
    with decoded.session(tmp_path / "tmp") as root:
        decoded.put(root, vol, decoded.LABEL, share=1 << 20)
        save(nifti, np.zeros((4, 5, 7), np.int16), make_affine(), np.int16)  # other size, other mtime
        assert decoded.get(root, str(nifti), decoded.LABEL) is None


def test_nothing_kept_over_the_share_outside_a_session_or_for_other_files(tmp_path, nifti):
    vol = read_image(nifti)
    with decoded.session(tmp_path / "tmp") as root:
        assert not decoded.put(root, vol, decoded.LABEL, share=vol.data.nbytes - 1)
        assert decoded.get(root, str(nifti), decoded.LABEL) is None
        other = tmp_path / "b.txt"
        other.write_text("x")
        vol.path = str(other)
        assert not decoded.put(root, vol, decoded.LABEL, share=1 << 20)
    assert not decoded.put(None, read_nifti(nifti), decoded.LABEL, share=1 << 20)
    assert decoded.get(None, str(nifti), decoded.LABEL) is None
    assert decoded.share(None, 10) == 0


def test_a_partial_entry_means_decode(tmp_path, nifti):
    vol = read_image(nifti)
    with decoded.session(tmp_path / "tmp") as root:
        decoded.put(root, vol, decoded.LABEL, share=1 << 20)
        (json_file,) = [p for p in os.scandir(root) if p.name.endswith(".json")]
        os.unlink(json_file.path)  # killed between the array and its metadata
        assert decoded.get(root, str(nifti), decoded.LABEL) is None
        decoded.put(root, vol, decoded.LABEL, share=1 << 20)
        (npy,) = [p.path for p in os.scandir(root) if p.name.endswith(".npy")]
        with open(npy, "r+b") as fh:
            fh.truncate(100)  # a damaged array
        assert decoded.get(root, str(nifti), decoded.LABEL) is None


def test_share_splits_a_quarter_of_the_memory(tmp_path):
    memory = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    (tmp_path / "tmp").mkdir()
    assert 0 < decoded.share(str(tmp_path / "tmp"), 4) <= memory * decoded.MEMORY_SHARE / 4
    assert decoded.share(str(tmp_path / "tmp"), 0) == 0


def test_session_folder_is_private_and_removed_even_on_error(tmp_path):
    with pytest.raises(RuntimeError), decoded.session(tmp_path / "tmp") as root:
        assert os.stat(root).st_mode & 0o777 == 0o700
        (tmp_path / "tmp" / os.path.basename(root) / "x.npy").write_bytes(b"x")
        raise RuntimeError("a stage failed")
    assert not os.path.exists(root) and os.listdir(tmp_path / "tmp") == []


def test_a_killed_runs_folder_is_removed_by_the_next_run(tmp_path):
    parent = tmp_path / "tmp"
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    host = decoded.socket.gethostname().replace("-", "_")
    stale = parent / f"decoded-{host}-{int(dead.stdout)}-1"
    live = parent / f"decoded-{host}-{os.getppid()}-1"  # a run still going (this test's parent process)
    other_host = parent / f"decoded-otherhost-{int(dead.stdout)}-1"  # a run on another machine: not ours to judge
    for folder in (stale, live, other_host):
        folder.mkdir(parents=True)
    with decoded.session(parent):
        pass
    assert not stale.exists() and live.exists() and other_host.exists()
