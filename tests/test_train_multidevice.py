"""The trainer on several devices: 1 device = 8 simulated devices (mesh 2×2×2) = 2 processes × 4
devices (jax.distributed over gloo) give the same losses and parameters. (Split from test_train.py so
the two long files run side by side under pytest-xdist.)"""
from test_train import driver, finish, free_port, load_params, losses, rel


# Adam's update g/(|g| + ε) turns the last-bit differences of a differently ordered gradient reduction on
# near-zero entries into ±lr jumps; ε = 1e-3 keeps the update linear in the gradient, so the comparison
# measures the sharded computation rather than that amplification (with ε = 1e-8 step 3 differed 2.7e-5).
SCALE = {"train.steps": 3, "train.batch_size": 4, "train.log_every": 1, "train.checkpoint_every": 3,
         "train.sample_at_end": False, "optimizer.eps": 1e-3}
MESH_222 = {"mesh.data": 2, "mesh.fsdp": 2, "mesh.tensor": 2}


def test_one_device_eight_devices_and_two_hosts_agree(env, tmp_path):
    runs = {
        "one": (1, dict(SCALE)),
        "eight": (8, {**SCALE, **MESH_222}),
    }
    procs = {name: driver(env, {"workdir": str(tmp_path / name), "out": str(tmp_path / f"{name}.npz"),
                                "overrides": ov}, devices=n) for name, (n, ov) in runs.items()}
    for p in procs.values():
        finish(p)
    port = free_port()
    hosts = [driver(env, {"workdir": str(tmp_path / "hosts"), "out": str(tmp_path / "hosts.npz"),
                          "overrides": {**SCALE, **MESH_222}, "coordinator": f"localhost:{port}",
                          "num_processes": 2, "process_id": i}, devices=4) for i in range(2)]
    for p in hosts:
        finish(p)

    ref_loss, ref = losses(tmp_path / "one"), load_params(tmp_path / "one.npz")
    assert sorted(ref_loss) == [1, 2, 3]
    for name in ("eight", "hosts"):
        got = losses(tmp_path / name)
        for step in (1, 2, 3):
            assert abs(got[step] - ref_loss[step]) <= 1e-5 * abs(ref_loss[step]), (name, step)
        params = load_params(tmp_path / f"{name}.npz")
        worst = max(rel(params[k], ref[k]) for k in ref)
        assert worst <= 1e-5, (name, worst)
    assert (tmp_path / "hosts" / "checkpoints" / "3").is_dir()


