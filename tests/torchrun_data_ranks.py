"""Run by tests/test_data_distributed.py under `torchrun --nproc_per_node=2`:
each rank iterates its TokenLoader (rank and world size from torch.distributed)
and rank 0 writes every rank's sample ids to a JSON file.

usage: torchrun --nproc_per_node=2 torchrun_data_ranks.py DATASET OUT.json [STATE.json]
"""

import json
import sys

import torch.distributed as dist

import pocketml as pm


def main() -> None:
    dataset, out = sys.argv[1], sys.argv[2]
    dist.init_process_group("gloo")
    loader = pm.data.TokenLoader(dataset, seq_len=32, batch_size=2, seed=5, packing="best_fit", drop_last=False)
    if len(sys.argv) > 3:  # resume a run made with another world size
        with open(sys.argv[3]) as f:
            loader.load_state_dict(json.load(f))
    steps = [b["sample_ids"].tolist() for b in loader]
    gathered = [None] * dist.get_world_size()
    dist.all_gather_object(gathered, {"rank": loader.rank, "world_size": loader.world_size, "steps": steps})
    if dist.get_rank() == 0:
        with open(out, "w") as f:
            json.dump(gathered, f)
    dist.destroy_process_group()


if __name__ == "__main__":
    main()
