"""Adapters for the published layouts of the licensed talking-face corpora.

    lrs2       mvlrs_v1/{main,pretrain}/<programme>/<NNNNN>.mp4 + .txt; pretrain/train/val/test.txt lists
    lrs3       {pretrain,trainval,test}/<video_id>/<NNNNN>.mp4 + .txt (word timings)
    voxceleb2  {dev,test}/mp4/idNNNNN/<video>/<NNNNN>.mp4 (+ {dev,test}/aac/.../<NNNNN>.m4a)
    cncvs      <subset>/sNNNNN/video/<name>.mp4 (+ <subset>/sNNNNN/audio/<name>.wav)

Each module exposes `<name>_utterances(root, ...) -> list[Utterance]`, registered in
pipelines/adapters.py. `fixtures.py` builds small trees in exactly these layouts from synthetic
clips, for the tests and the benchmarks (the corpora themselves are licensed).
"""
