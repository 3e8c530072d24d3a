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


def _record(path, **extra):
    return {"case_id": "c0", "patient_id": "p0", "target": None, "split": None, "images": [str(path)],
            "label": None, "read": {}, "label_classes": None, **extra}


def test_a_case_kept_ahead_is_claimed_whole_as_write_case_would_write_it(tmp_path, nifti):
    from medflow.data.casefile import file_sha256, write_case

    arrays = {"image": np.arange(60, dtype=np.float32).reshape(1, 3, 4, 5), "label": np.ones((3, 4, 5), np.uint8)}
    meta = {"case_id": "c0", "shape": [3, 4, 5]}
    plan = {"spacing": (1.0, 1.0, 1.0), "image_order": 1}
    want = write_case(tmp_path / "want.npz", arrays, meta)
    with decoded.session(tmp_path / "tmp") as root:
        key = decoded.ahead_key(_record(nifti), plan)
        assert key is not None and key == decoded.ahead_key(_record(nifti), dict(plan))
        assert key != decoded.ahead_key(_record(nifti), {**plan, "image_order": 3})  # another plan
        assert key != decoded.ahead_key(_record(nifti, split="test"), plan)  # another record
        assert not decoded.keep_case(root, key, arrays, meta, share=100)  # over its share: not kept
        assert decoded.claim_case(root, key, tmp_path / "out" / "c0.npz") is None
        assert decoded.keep_case(root, key, arrays, meta, share=1 << 20)
        dest = tmp_path / "out" / "c0.npz"
        assert decoded.claim_case(root, key, dest) == want == file_sha256(dest)
        assert dest.read_bytes() == (tmp_path / "want.npz").read_bytes()
        assert (dest.stat().st_mode & 0o777) == (tmp_path / "want.npz").stat().st_mode & 0o777
        assert decoded.claim_case(root, key, tmp_path / "again.npz") is None  # claimed once


def test_no_case_ahead_when_partial_stale_or_not_nifti(tmp_path, nifti):
    arrays, meta, plan = {"image": np.zeros((1, 2, 2, 2), np.float32)}, {}, {"spacing": (1.0, 1.0, 1.0)}
    with decoded.session(tmp_path / "tmp") as root:
        key = decoded.ahead_key(_record(nifti), plan)
        assert decoded.keep_case(root, key, arrays, meta, share=1 << 20)
        (tmp_path / "tmp").joinpath(os.path.basename(root), f"{key}.json").unlink()  # the sidecar goes last
        assert decoded.claim_case(root, key, tmp_path / "a.npz") is None and not (tmp_path / "a.npz").exists()
        save(nifti, np.zeros((4, 5, 7), np.int16), make_affine(), np.int16)  # rewritten: another key
        assert decoded.ahead_key(_record(nifti), plan) != key
        folder = tmp_path / "series"
        folder.mkdir()
        assert decoded.ahead_key(_record(folder), plan) is None  # a DICOM series folder
        assert decoded.ahead_key(_record(tmp_path / "gone.nii.gz"), plan) is None
    assert not decoded.keep_case(None, key, arrays, meta, share=1 << 20)
    assert decoded.claim_case(None, key, tmp_path / "b.npz") is None


def test_no_session_folder_on_a_read_only_workspace_means_no_hand_off(tmp_path):
    blocked = tmp_path / "file"
    blocked.write_text("a file where the workspace's tmp folder would go")
    with decoded.session(blocked / "tmp") as root:  # mkdir fails (ENOTDIR), as on EROFS
        assert root is None
