"""The common HDF5 demo layout: round-trip, crash safety (parts), resume, finalize merges."""

import h5py
import numpy as np
import pytest

from dfm_vla.envs.demo_file import Demo, DemoWriter, read_demo_file


def _demo(rng, n, seed, images=False):
    obs = {"state": rng.normal(size=(n, 8)).astype(np.float32), "object_state": rng.normal(size=(n, 58))}
    if images:
        obs["agentview_rgb"] = rng.integers(0, 255, size=(n, 16, 16, 3), dtype=np.uint8)
    return Demo(
        actions=rng.uniform(-1, 1, size=(n, 7)),
        obs=obs,
        language="put the bowl on the plate",
        success=True,
        seed=seed,
        task_index=8,
        states=rng.normal(size=(n, 79)),
        attrs={"noise": 0.1},
    )


def _writer(path):
    return DemoWriter(
        path,
        env_name="libero_goal",
        env_args={"camera_mode": "none"},
        problem_info={"language_instruction": "put the bowl on the plate"},
        bddl_file_name="libero_goal/put_the_bowl_on_the_plate.bddl",
    )


def test_round_trip_layout(tmp_path):
    rng = np.random.default_rng(0)
    demos = [_demo(rng, 5, 10, images=True), _demo(rng, 7, 11, images=True)]
    writer = _writer(tmp_path / "task_demo.hdf5")
    for d in demos:
        writer.add(d)
    path = writer.finalize()
    assert not writer.parts_dir.exists()

    attrs, back = read_demo_file(path)
    assert attrs["env_name"] == "libero_goal" and attrs["total"] == 12
    assert attrs["problem_info"]["language_instruction"] == "put the bowl on the plate"
    assert attrs["bddl_file_name"].endswith(".bddl")
    assert len(back) == 2
    for original, read in zip(demos, back, strict=True):
        np.testing.assert_array_equal(read.actions, original.actions)
        np.testing.assert_array_equal(read.states, original.states)
        for key in original.obs:
            np.testing.assert_array_equal(read.obs[key], original.obs[key])
        assert read.obs["agentview_rgb"].dtype == np.uint8
        assert (read.language, read.success, read.seed, read.task_index) == (
            "put the bowl on the plate",
            True,
            original.seed,
            8,
        )
        assert read.attrs["noise"] == pytest.approx(0.1)
        assert read.dones[-1] == 1 and read.rewards[-1] == 1.0
    with h5py.File(path) as f:  # the robomimic/LIBERO names other readers rely on
        g = f["data/demo_1"]
        assert g.attrs["num_samples"] == 7 and g["obs/state"].shape == (7, 8) and g["actions"].shape == (7, 7)


def test_crash_keeps_finished_demos_and_resume_appends(tmp_path):
    rng = np.random.default_rng(1)
    path = tmp_path / "task_demo.hdf5"
    writer = _writer(path)
    writer.add(_demo(rng, 4, 1))
    writer.add(_demo(rng, 4, 2))
    del writer  # "crash": never finalized

    resumed = _writer(path)
    assert len(resumed) == 2 and sorted(resumed.seeds()) == [1, 2]
    resumed.add(_demo(rng, 3, 3))
    resumed.finalize()
    assert len(read_demo_file(path)[1]) == 3

    again = _writer(path)  # reopening a finalized file appends after its demos
    assert len(again) == 3
    again.add(_demo(rng, 2, 4))
    again.finalize()
    attrs, demos = read_demo_file(path)
    assert [d.seed for d in demos] == [1, 2, 3, 4] and attrs["total"] == 4 + 4 + 3 + 2


def test_bad_demo_is_rejected_with_field_name():
    with pytest.raises(ValueError, match=r"obs\['state'\]: expected 3 rows"):
        Demo(
            actions=np.zeros((3, 7)),
            obs={"state": np.zeros((2, 8))},
            language="x",
            success=True,
            seed=0,
            task_index=0,
        )
    with pytest.raises(ValueError, match="actions: expected shape"):
        Demo(actions=np.zeros(3), obs={}, language="x", success=True, seed=0, task_index=0)
