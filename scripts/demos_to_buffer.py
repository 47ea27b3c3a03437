"""Write frames of held-out demonstration episodes as an unlabeled observation buffer.

    PYTHONPATH=. .venv/bin/python scripts/demos_to_buffer.py --demos data/libero_object \\
        --include '*_ep000[01].npz' --per-episode 3 --out data/libero_calib

The buffer (``data.RecordedBuffer``) holds images, state and instruction only: the actions
stay behind, so calibration (``quantvla quantize --calib``) is label-free. Frames are spread
evenly over each episode; camera slots follow the pi05-libero policy (agentview ->
``base_0_rgb``, eye-in-hand -> ``left_wrist_0_rgb``).
"""

import argparse
import sys
from pathlib import Path

import numpy as np

from quantvla_ros.data.buffer import RecordedBuffer
from quantvla_ros.data.observation import Observation
from quantvla_ros.training.demos import load_demos

SLOTS = {"agentview": "base_0_rgb", "wrist": "left_wrist_0_rgb"}


def main(argv=None) -> int:
    """Sample the frames and append them to a new buffer."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--demos", type=Path, required=True)
    parser.add_argument("--include", required=True, help="file-name glob of the episodes")
    parser.add_argument("--per-episode", type=int, default=3)
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args(argv)
    demos = load_demos(args.demos, include=args.include)
    size = demos.views["agentview"].shape[1:3]
    episode = demos.frame_episode(np.arange(demos.num_frames))
    buffer = RecordedBuffer.create(args.out, {s: tuple(size) for s in SLOTS.values()},
                                   demos.state.shape[1],
                                   source=f"held-out LIBERO demonstrations {args.include} "
                                          f"of {args.demos}")
    with buffer:
        for e in range(len(demos.files)):
            frames = np.flatnonzero(episode == e)
            picks = frames[np.linspace(0, len(frames) - 1, args.per_episode).round().astype(int)]
            for f in picks:
                step = demos.frame_step[f]
                buffer.append(Observation(
                    images={slot: demos.views[view][f] for view, slot in SLOTS.items()},
                    state=demos.state[step], instruction=demos.instructions[e],
                    stamp=float(step - demos.episode_start[e]) / 20.0))  # 20 Hz control
    print(f"wrote {len(buffer)} observations from {len(demos.files)} episodes to {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
