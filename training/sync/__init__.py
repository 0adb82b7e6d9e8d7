"""The sync wing: scoring audio-visual sync with an expert, apart from the trainer.

The trainer (training/*.py) never imports this package (tests/test_layers.py); the wing may use
the trainer's model, checkpoints and model-input preparation (windows, normalisation); it reads
the store through catalog.reader and runs its jobs through catalog/jobs.py.

    scorers.py    the scorer registry: SyncNet and UniSync behind one interface, one model cache
    scoring.py    the sync table of a clip and what is read off it: offset, LSE-D, LSE-C
    syncnet.py    SyncNet, the architecture of syncnet_python's published weights
    audio.py      SyncNet's audio input: int16-scale MFCC windows
    crops.py      SyncNet's visual input: 224 x 224 BGR crops under named crop protocols
    video.py      a video file as SyncNet input, streamed; lossless crop files
    reference_io.py syncnet_python's ffmpeg input path in process (JPEG round trip, ffmpeg's audio)
    score.py      the scoring CLI for video files (python -m training.sync.score --help)
    sync_pass.py  the sync pass: a store's utterances scored into catalog columns
                  (python -m training.sync.sync_pass --help)
    plots.py      one PNG per scored video
    loss.py       SyncLoss: a frozen expert as a differentiable loss for generator training
    objectives.py AVSyncLoss: a frozen AV-SyncNet's L_cav and L_lip for a generator (SyncTalklip
                  Eq. 11-13), and the equations re-exported from training/objectives.py
"""
