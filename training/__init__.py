"""UniSync sync-expert training on a unisync store (DESIGN.md, Training).

    combos.py    combo names, their fields and default margins
    data.py      catalog rows -> only the combo's field tars, in lockstep -> Utterance objects;
                 per-rank shard lists and the shard buffer (streaming)
    sampler.py   seeded pairs: positives, same-speaker shifted and cross-speaker negatives
    windows.py   5-frame windows of a batch of pairs on the shared timebase -> model inputs
    model.py     the dual-stream UniSync model (adapters, fixed pooling, shared trunks, cosine)
    loss.py      Eq. 1 margin BCE and the paper's Adam
    evaluate.py  balanced accuracy on fixed seeded pairs, offset detection; a CLI
    fit.py       the training script (python training/fit.py --help; torchrun) and `train(args)`
    ablate.py    the paper's Table IV / Table V grid on a store
"""
