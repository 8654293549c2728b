"""Test helper (not a test): extract descriptors of an image list with a tiny seeded conv net.

Usage: python tests/_extract_job.py IMAGE_LIST OUT_DIR SHARD_SIZE

Test-only hook: the environment variable SGLIB_TEST_SLEEP (seconds per image, default 0) slows
the describer so that a test can kill this process while shards are still being written.
"""
import os
import sys
import time

import torch
import torch.nn as nn
import torch.nn.functional as F

from sglib.scale.extract import Extractor, extract_features
from sglib.scale.shards import read_image_list
from sglib.method.pooling import gem
from sglib.data.preprocess import load_network_input


def tiny_extractor() -> Extractor:
    """A seeded random 2-layer conv net + GeM: a real (small) network, identical in every process."""
    torch.manual_seed(0)
    net = nn.Sequential(nn.Conv2d(3, 8, 3, stride=2), nn.ReLU(), nn.Conv2d(8, 16, 3, stride=2), nn.ReLU()).eval()
    delay = float(os.environ.get("SGLIB_TEST_SLEEP", "0"))

    def describe(x):
        time.sleep(delay * x.shape[0])
        return F.normalize(gem(net(x), 3.0, 1e-6), dim=-1)

    return Extractor(describe, load_network_input, {"name": "tiny-test-net", "seed": 0})


if __name__ == "__main__":
    torch.set_num_threads(1)
    list_file, out_dir, shard_size = sys.argv[1], sys.argv[2], int(sys.argv[3])
    paths, boxes = read_image_list(list_file)
    extract_features(out_dir, paths, tiny_extractor(), boxes, shard_size=shard_size, progress=False)
