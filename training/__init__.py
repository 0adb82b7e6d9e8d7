"""UniSync sync-expert training on a unisync store (DESIGN.md, Training), and the sync wing.

    combos.py    combo names, their fields and default margins
    data.py      catalog rows -> only the combo's field tars (catalog.tars.iter_shard) ->
                 Utterance objects; per-rank shard lists and the shard buffer (streaming)
    loader.py    the DataLoader: per-worker streams of the rank's shards, seeded samplers,
                 exact resume; batches of raw uint8 / float16 windows
    handoff.py   how loader workers hand batches to the training process (shared-memory arenas)
    sampler.py   seeded pairs: positives, same-speaker shifted and cross-speaker negatives
    windows.py   5-frame windows of a batch of pairs on the shared timebase; normalised on the device
    model.py     the dual-stream UniSync model (adapters, fixed pooling, shared trunks, cosine)
    loss.py      Eq. 1 margin BCE and the paper's Adam
    evaluate.py  balanced accuracy on fixed seeded pairs, offset detection; a CLI
    config.py    TrainConfig: a run's typed settings and fit.py's command line
    runtime.py   device, autocast, ranks (DDP), checkpoints
    fit.py       the training script (python training/fit.py --help; torchrun) and `train(config)`
    progress.py  fit.py's progress bar: steps, or the nearer end of --max-minutes and --steps
    ablate.py    the paper's Table IV / Table V grid on a store

    SyncTalklip's AV-SyncNet (fit.py --model avsync):
    objectives.py  Eq. 4-7, 11-13: theta = F(tau |f^a - f^v|), L_av, L_lip, L_cav, InfoNCE, Eq. 6 / 13
    avsync.py      the model: per-frame fronts, a shared transformer encoder, F, a lip-reading decoder
    avsync_train.py  what --model avsync adds to fit.py's loop (Eq. 6, the lip stream, CER reports)
    lipread.py     the character tokenizer, whole-utterance transcript batches, CER and its baseline

    sync/        the sync wing: scorers (SyncNet, UniSync) behind one registry, scoring, the
                 score CLI, the sync pass, plots, SyncLoss (see training/sync/__init__.py); the
                 trainer above never imports it (tests/test_layers.py)
"""
