"""Demo readers: our HDF5 layout, official LIBERO files, LeRobot v2.1 and v3.0 (parquet, PNG and MP4)."""

import io
import json

import h5py
import imageio.v2 as imageio
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from dfm_vla.train.readers import detect_format, read_episodes, read_hdf5, read_lerobot


def _write_our_hdf5(path, lengths, task_index=0, language="put the bowl on the plate", seed=0):
    rng = np.random.default_rng(seed)
    arrays = {}
    with h5py.File(path, "w") as f:
        data = f.create_group("data")
        data.attrs["total"] = int(sum(lengths))
        data.attrs["env_name"] = "libero_goal"
        data.attrs["problem_info"] = json.dumps({"language_instruction": language})
        for i, length in enumerate(lengths):
            demo = data.create_group(f"demo_{i}")
            demo.attrs.update(
                num_samples=length, language=language, success=True, seed=i, task_index=task_index
            )
            actions = rng.uniform(-1, 1, (length, 7)).astype(np.float32)
            state = rng.normal(size=(length, 8))
            demo["actions"] = actions
            demo["obs/state"] = state
            demo["obs/object_state"] = rng.normal(size=(length, 5))
            demo["rewards"] = np.zeros(length)
            demo["dones"] = np.zeros(length)
            arrays[i] = (actions, state)
    return arrays


def test_our_hdf5_layout_reads_demos_in_numeric_order(tmp_path):
    # demo_10 must come after demo_2 (numeric, not lexicographic order).
    arrays = _write_our_hdf5(tmp_path / "demos.hdf5", [5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15], task_index=3)
    episodes = read_hdf5(tmp_path / "demos.hdf5", obs_keys=["state", "object_state"])
    assert [len(ep) for ep in episodes] == list(range(5, 16))
    np.testing.assert_array_equal(episodes[10].actions, arrays[10][0])
    np.testing.assert_allclose(episodes[10].obs["state"], arrays[10][1], rtol=1e-6)
    assert episodes[0].obs["object_state"].shape == (5, 5)
    assert {ep.task_index for ep in episodes} == {3}
    assert episodes[0].language == "put the bowl on the plate"
    with pytest.raises(ValueError, match=r"obs: no key 'agentview_rgb'; available: object_state, state"):
        read_hdf5(tmp_path / "demos.hdf5", obs_keys=["agentview_rgb"])


def _write_official_libero(path, language, lengths, seed):
    """The official LIBERO data set layout: no `state`, no per-demo language, problem_info on /data."""
    rng = np.random.default_rng(seed)
    parts = {}
    with h5py.File(path, "w") as f:
        data = f.create_group("data")
        data.attrs["problem_info"] = json.dumps(
            {"language_instruction": language, "domain_name": "robosuite"}
        )
        data.attrs["bddl_file_name"] = "x.bddl"
        for i, length in enumerate(lengths):
            demo = data.create_group(f"demo_{i}")
            demo.attrs["num_samples"] = length
            demo["actions"] = rng.uniform(-1, 1, (length, 7))
            p = {
                k: rng.normal(size=(length, n))
                for k, n in [("ee_pos", 3), ("ee_ori", 3), ("gripper_states", 2)]
            }
            for key, value in p.items():
                demo[f"obs/{key}"] = value
            demo["obs/joint_states"] = rng.normal(size=(length, 7))
            demo["obs/agentview_rgb"] = rng.integers(0, 255, (length, 8, 8, 3), dtype=np.uint8)
            parts[i] = p
    return parts


def test_official_libero_files_get_an_8d_state_and_task_indices_from_a_folder(tmp_path):
    parts_b = _write_official_libero(tmp_path / "turn_on_the_stove_demo.hdf5", "turn on the stove", [4, 5], 1)
    _write_official_libero(tmp_path / "open_the_middle_drawer_demo.hdf5", "open the middle drawer", [6], 2)
    assert detect_format(tmp_path) == "hdf5"
    episodes = read_episodes(tmp_path, obs_keys=["state", "agentview_rgb"])
    assert [ep.language for ep in episodes] == [
        "open the middle drawer",
        "turn on the stove",
        "turn on the stove",
    ]
    # Task indices follow the sorted languages of the folder.
    assert [ep.task_index for ep in episodes] == [0, 1, 1]
    state = episodes[2].obs["state"]
    assert state.shape == (5, 8) and state.dtype == np.float32
    expected = np.concatenate(
        [parts_b[1]["ee_pos"], parts_b[1]["ee_ori"], parts_b[1]["gripper_states"]], axis=1
    )
    np.testing.assert_allclose(state, expected, rtol=1e-6)
    assert episodes[0].obs["agentview_rgb"].dtype == np.uint8
    # Without obs_keys, every key is read and `state` is still built.
    everything = read_hdf5(tmp_path / "turn_on_the_stove_demo.hdf5")
    assert {"state", "joint_states", "ee_pos"} <= set(everything[0].obs)


def _frames(n, offset, size=32):
    """n solid-grey frames whose brightness encodes the global frame number (robust to MP4 loss)."""
    return [np.full((size, size, 3), 8 * (offset + i) + 20, dtype=np.uint8) for i in range(n)]


def _write_mp4(path, frames, fps):
    path.parent.mkdir(parents=True, exist_ok=True)
    with imageio.get_writer(
        path, format="ffmpeg", fps=fps, codec="libx264", quality=10, macro_block_size=1
    ) as w:
        for frame in frames:
            w.append_data(frame)


def _features(version_video=True):
    feats = {
        "action": {"dtype": "float32", "shape": [7]},
        "observation.state": {"dtype": "float32", "shape": [8]},
        "timestamp": {"dtype": "float32", "shape": [1]},
        "frame_index": {"dtype": "int64", "shape": [1]},
        "episode_index": {"dtype": "int64", "shape": [1]},
        "task_index": {"dtype": "int64", "shape": [1]},
    }
    if version_video:
        feats["observation.images.agentview"] = {"dtype": "video", "shape": [32, 32, 3]}
    return feats


def _episode_rows(ep, length, task, fps, rng):
    return {
        "action": rng.uniform(-1, 1, (length, 7)).astype(np.float32).tolist(),
        "observation.state": rng.normal(size=(length, 8)).astype(np.float32).tolist(),
        "timestamp": (np.arange(length) / fps).tolist(),
        "frame_index": list(range(length)),
        "episode_index": [ep] * length,
        "task_index": [task] * length,
    }


def test_lerobot_v2_parquet_per_episode_with_videos(tmp_path):
    fps, rng = 10, np.random.default_rng(0)
    lengths, tasks = [6, 4], [1, 0]
    info = {
        "codebase_version": "v2.1",
        "fps": fps,
        "chunks_size": 1000,
        "data_path": "data/chunk-{episode_chunk:03d}/episode_{episode_index:06d}.parquet",
        "video_path": "videos/chunk-{episode_chunk:03d}/{video_key}/episode_{episode_index:06d}.mp4",
        "features": _features(),
    }
    (tmp_path / "meta").mkdir()
    (tmp_path / "meta/info.json").write_text(json.dumps(info))
    (tmp_path / "meta/tasks.jsonl").write_text(
        '{"task_index": 0, "task": "stack the cups"}\n{"task_index": 1, "task": "open the drawer"}\n'
    )
    written = {}
    for ep, (length, task) in enumerate(zip(lengths, tasks, strict=True)):
        rows = _episode_rows(ep, length, task, fps, rng)
        written[ep] = rows
        path = tmp_path / f"data/chunk-000/episode_{ep:06d}.parquet"
        path.parent.mkdir(parents=True, exist_ok=True)
        pq.write_table(pa.table(rows), path)
        video = tmp_path / f"videos/chunk-000/observation.images.agentview/episode_{ep:06d}.mp4"
        _write_mp4(video, _frames(length, offset=10 * ep), fps)
    assert detect_format(tmp_path) == "lerobot"
    episodes = read_episodes(tmp_path)
    assert [len(ep) for ep in episodes] == lengths
    assert [ep.language for ep in episodes] == ["open the drawer", "stack the cups"]
    np.testing.assert_allclose(episodes[1].actions, np.asarray(written[1]["action"]), rtol=1e-6)
    np.testing.assert_allclose(
        episodes[0].obs["state"], np.asarray(written[0]["observation.state"]), rtol=1e-6
    )
    frames = episodes[1].obs["agentview_rgb"]
    assert frames.shape == (4, 32, 32, 3) and frames.dtype == np.uint8
    brightness = frames.reshape(4, -1).mean(axis=1)
    np.testing.assert_allclose(brightness, 8 * (10 + np.arange(4)) + 20, atol=3)
    # State only: no video is decoded.
    assert set(read_lerobot(tmp_path, obs_keys=["state"])[0].obs) == {"state"}


def test_lerobot_v3_files_hold_many_episodes_and_videos_are_cut_by_timestamp(tmp_path):
    fps, rng = 10, np.random.default_rng(1)
    lengths = [5, 7, 3]
    info = {
        "codebase_version": "v3.0",
        "fps": fps,
        "chunks_size": 1000,
        "data_path": "data/chunk-{chunk_index:03d}/file-{file_index:03d}.parquet",
        "video_path": "videos/{video_key}/chunk-{chunk_index:03d}/file-{file_index:03d}.mp4",
        "features": _features(),
    }
    (tmp_path / "meta/episodes/chunk-000").mkdir(parents=True)
    (tmp_path / "meta/info.json").write_text(json.dumps(info))
    pq.write_table(pa.table({"task_index": [0], "task": ["fold the towel"]}), tmp_path / "meta/tasks.parquet")
    # Episodes 0 and 1 in data file 0 and video file 0; episode 2 in file 1 of both.
    all_rows = [_episode_rows(ep, n, 0, fps, rng) for ep, n in enumerate(lengths)]
    for file_index, eps in [(0, [0, 1]), (1, [2])]:
        merged = {k: sum((all_rows[e][k] for e in eps), []) for k in all_rows[0]}
        path = tmp_path / f"data/chunk-000/file-{file_index:03d}.parquet"
        path.parent.mkdir(parents=True, exist_ok=True)
        pq.write_table(pa.table(merged), path)
        frames = sum((_frames(lengths[e], offset=10 * e) for e in eps), [])
        _write_mp4(
            tmp_path / f"videos/observation.images.agentview/chunk-000/file-{file_index:03d}.mp4", frames, fps
        )
    key = "videos/observation.images.agentview"
    meta = {
        "episode_index": [0, 1, 2],
        "length": lengths,
        f"{key}/chunk_index": [0, 0, 0],
        f"{key}/file_index": [0, 0, 1],
        f"{key}/from_timestamp": [0.0, lengths[0] / fps, 0.0],
    }
    pq.write_table(pa.table(meta), tmp_path / "meta/episodes/chunk-000/file-000.parquet")
    episodes = read_lerobot(tmp_path)
    assert [len(ep) for ep in episodes] == lengths
    assert {ep.language for ep in episodes} == {"fold the towel"}
    np.testing.assert_allclose(episodes[2].actions, np.asarray(all_rows[2]["action"]), rtol=1e-6)
    for e, ep in enumerate(episodes):
        brightness = ep.obs["agentview_rgb"].reshape(len(ep), -1).mean(axis=1)
        np.testing.assert_allclose(brightness, 8 * (10 * e + np.arange(len(ep))) + 20, atol=3)


def test_lerobot_image_features_stored_as_png_bytes(tmp_path):
    fps, rng = 5, np.random.default_rng(2)
    feats = _features(version_video=False)
    feats["observation.images.wrist"] = {"dtype": "image", "shape": [8, 8, 3]}
    (tmp_path / "meta").mkdir()
    (tmp_path / "meta/info.json").write_text(
        json.dumps({"codebase_version": "v2.0", "fps": fps, "features": feats})
    )
    (tmp_path / "meta/tasks.jsonl").write_text('{"task_index": 0, "task": "wave"}\n')
    rows = _episode_rows(0, 3, 0, fps, rng)
    images = rng.integers(0, 255, (3, 8, 8, 3), dtype=np.uint8)
    cells = []
    for img in images:
        buf = io.BytesIO()
        imageio.imwrite(buf, img, format="png")
        cells.append({"bytes": buf.getvalue(), "path": None})
    rows["observation.images.wrist"] = cells
    (tmp_path / "data/chunk-000").mkdir(parents=True)
    pq.write_table(pa.table(rows), tmp_path / "data/chunk-000/episode_000000.parquet")
    (episode,) = read_lerobot(tmp_path)
    np.testing.assert_array_equal(episode.obs["wrist_rgb"], images)  # PNG is lossless


def test_readers_refuse_bad_inputs_with_named_fields(tmp_path):
    with pytest.raises(FileNotFoundError, match="expected an HDF5 demo file"):
        detect_format(tmp_path)
    with h5py.File(tmp_path / "bad.hdf5", "w") as f:
        f.create_group("data/demo_0/obs")
    with pytest.raises(ValueError, match="missing the 'actions' data set"):
        read_hdf5(tmp_path / "bad.hdf5")
    (tmp_path / "lr/meta").mkdir(parents=True)
    (tmp_path / "lr/meta/info.json").write_text(json.dumps({"codebase_version": "v1.6", "features": {}}))
    with pytest.raises(ValueError, match="codebase_version: expected v2.x or v3.0"):
        read_lerobot(tmp_path / "lr")
