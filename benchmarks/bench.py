"""Speed of minires against PyTorch on the CPU; same as `minires bench`.

    python benchmarks/bench.py --quick
    python benchmarks/bench.py --models resnet-20,seed-cnn,bottleneck-29,wrn-16-4 --json bench.json
"""
import sys

from minires.bench import main

if __name__ == "__main__":
    sys.exit(main())
