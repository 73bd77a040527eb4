"""Training from scratch and ASE fine-tuning (Algorithm 1), offline data, exact resume.

Command line (every flag is a field of ``TrainConfig`` / ``FinetuneConfig`` in ``eediff.config``)::

    # data: Fashion-MNIST from `apt-get install -y dataset-fashion-mnist`, carried as one .npz
    eediff export-data --dataset fashion-mnist --split train --out .data/fmnist_train.npz

    # from scratch: an architecture plus a JSON of constructor fields (image size, channels and
    # classes default to the data's), or a registry size name (--model DiT-S/2) with overrides
    eediff train --dataset .data/fmnist_train.npz --arch DiT \\
        --model-config '{"patch_size": 2, "hidden_size": 256, "depth": 12, "num_heads": 4}' \\
        --steps 20000 --batch-size 256 --lr 3e-4 --compile --out runs/dit-fmnist

    # ASE fine-tuning for an exit schedule; the exported EMA model records the schedule
    eediff finetune --init runs/dit-fmnist/final.safetensors --schedule 12,10,8,6,4 \\
        --dataset .data/fmnist_train.npz --steps 3000 --lr 1e-4 --ema-decay 0.999 --out runs/dit-fmnist-d4
    eediff sample --model runs/dit-fmnist-d4/final.safetensors      # samples with its schedule

    # continue a run exactly where its last checkpoint left it
    eediff train --out runs/dit-fmnist --resume

    # several processes: N GPUs, or CPU processes with gloo (accelerate's `--cpu` flag alone starts one
    # process; `--multi_gpu` selects its torchrun launcher, which also works without GPUs)
    accelerate launch --multi_gpu --num_processes 2 -m eediff.cli train --device cpu ...
    torchrun --nproc_per_node 2 -m eediff.cli train ...

    # latent models: encode images once, train on the shards
    eediff encode --vae VAE_FOLDER --images IMAGE_FOLDER --image-size 256 --out latents/
    eediff train --dataset latents/ --model DiT-S/2 --vae VAE_FOLDER ...

A run directory holds ``config.json`` (the resolved options; ``--config`` takes such a file),
``metrics.jsonl`` (step, loss, lr, steps_per_s, t = wall seconds), ``samples/step-*.png`` (EMA weights, the
schedule being tuned), ``checkpoints/step-*/`` and ``final.safetensors`` (+ ``final-fp16.safetensors``).
"""
