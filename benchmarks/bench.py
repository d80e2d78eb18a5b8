"""Speed of minires against PyTorch on the CPU; same as `minires bench`.

    python benchmarks/bench.py --quick                      # resnet-20 and seed-cnn, 3 repeats
    python benchmarks/bench.py --quick --models wrn-16-4    # --quick keeps --models
    python benchmarks/bench.py --models resnet-20,seed-cnn,bottleneck-29,wrn-16-4 --json bench.json
    python benchmarks/bench.py --no-torch                   # minires alone (also what happens without torch)
    python benchmarks/bench.py --rounds 3 --portable        # alternate the libraries 3 times; time the portable build too
    python benchmarks/bench.py --epoch --models resnet-20 --data-dir DATA   # one CIFAR-10 epoch end to end

`--help` lists every option; `minires bench` takes the same ones.
"""
import sys

from minires.dev.bench import main

if __name__ == "__main__":
    sys.exit(main())
