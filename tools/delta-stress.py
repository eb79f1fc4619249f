#!/usr/bin/env python3
"""tools/delta-stress.py — random edits against older versions, through `sluice copy`.

    tools/delta-stress.py SLUICE_BINARY RUNS SEED [WORK_DIR]

Each run writes an older version (random bytes, or repetitive bytes whose anchors repeat) into
WORK_DIR/dst (default /dev/shm/delta-stress), edits a copy with 1 to 80 insertions, deletions
and overwrites of 1 byte to 300 KB at random offsets, and copies it over the older version at a
block size of 64 KiB, 256 KiB or 1 MiB, over QUIC or TCP. Every run must exit 0, print no panic
and leave the destination equal to the new version. Prints each run's bytes on the wire and the
total; the edits' offsets and sizes follow SEED (their bytes do not).
"""
import os, random, subprocess, sys, shutil, json
BIN = sys.argv[1]; N = int(sys.argv[2]); seed = int(sys.argv[3])
rng = random.Random(seed)
base = sys.argv[4] if len(sys.argv) > 4 else '/dev/shm/delta-stress'
fails = 0; wire_total = 0
for it in range(N):
    shutil.rmtree(base, ignore_errors=True); os.makedirs(base + '/src'); os.makedirs(base + '/dst')
    size = rng.randint(1, 24) * 1048576 + rng.randint(0, 100000)
    old = bytearray(os.urandom(size))
    if rng.random() < 0.3:  # repetitive data: anchors repeat
        old = bytearray((b'abcdefgh' * (size // 8 + 1))[:size])
        for k in range(0, size, 4096 * 7): old[k:k+16] = os.urandom(16)
    new = bytearray(old)
    for _ in range(rng.randint(1, 80)):
        at = rng.randint(0, max(0, len(new) - 1)); n = rng.choice([1, 7, 100, 511, 513, 4096, 4097, 20000, 300000])
        kind = rng.random()
        if kind < 0.4: new[at:at] = os.urandom(n)
        elif kind < 0.8: del new[at:at + n]
        else: new[at:at + n] = os.urandom(min(n, len(new) - at))
    bs = rng.choice(['64K', '1M', '256K'])
    open(base + '/dst/f', 'wb').write(old); open(base + '/src/f', 'wb').write(new)
    os.utime(base + '/dst/f', (0, 0))
    args = [BIN, 'copy', '--json', '--block-size', bs, base + '/src/f', base + '/dst/']
    if rng.random() < 0.3: args.insert(2, '--transport'); args.insert(3, 'tcp')
    p = subprocess.run(args, capture_output=True, text=True, timeout=120)
    same = open(base + '/dst/f', 'rb').read() == bytes(new)
    summ = [json.loads(l) for l in p.stdout.splitlines() if '"summary"' in l]
    w = summ[0]['wire_bytes'] if summ else -1
    wire_total += max(w, 0)
    if p.returncode != 0 or not same or 'panick' in p.stderr:
        fails += 1
        print('FAIL', it, size, bs, p.returncode, same, p.stderr[-500:])
    else:
        print(it, size, bs, 'wire', w, 'resent', summ[0].get('resent_blocks'))
print('fails', fails, 'wire total', wire_total)
shutil.rmtree(base, ignore_errors=True)
sys.exit(1 if fails else 0)
