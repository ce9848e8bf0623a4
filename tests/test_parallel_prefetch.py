"""parallel.prefetch_to_device: same batches in the same order, already on the mesh, ``size`` ahead."""

import numpy as np
import pytest

from scoresde import parallel


def test_prefetch_to_device_keeps_order_and_runs_ahead():
    mesh = parallel.make_mesh()
    pulled = []

    def host():
        for i in range(5):
            pulled.append(i)
            yield {"image": np.full((4, 2), i, np.float32), "label": np.arange(4, dtype=np.int32) + i}

    it = parallel.prefetch_to_device(host(), mesh, size=2)
    first = next(it)
    assert pulled == [0, 1, 2]  # two batches in flight beyond the one handed out
    out = [first] + list(it)
    assert [int(b["image"][0, 0]) for b in out] == [0, 1, 2, 3, 4]
    assert all(b["image"].sharding == parallel.data_sharding(mesh) for b in out)
    np.testing.assert_array_equal(out[3]["label"], np.arange(4) + 3)
    with pytest.raises(ValueError, match="prefetch size must be >= 1; got 0"):
        next(parallel.prefetch_to_device(host(), mesh, size=0))
