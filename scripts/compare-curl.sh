#!/usr/bin/env bash
# Compares `fhir-bulk download manifest.json` with curl on the same static exports, served by
# nginx on 127.0.0.1 (a free port, a temporary config, in the foreground; stopped at exit):
#
#   1. 1 GB in 7 files, identity encoding       curl --parallel --parallel-max 4
#   2. the same files, gzip on the wire          curl ... --compressed (nginx gzip_static)
#   3. 2,000 files of 40 KB, and 20,000 files    curl --parallel --parallel-max 4
#      of one line (Oracle Health-sized)
#   4. 500 and 4,000 tiny files (CPU growth)     fhir-bulk only: CPU(4,000) / CPU(500)
#   5. bytes written (cases 3 and 4)             fhir-bulk only, under strace: its own files
#                                                against the bound data + 1% + 1 MB
#
# Prints wall time, CPU time (user + system) and peak RSS of each client, and the ratios
# fhir-bulk / curl. Both clients write every file to disk; fhir-bulk also syncs each file's
# data before its rename (a power cut cannot take back a file it reported), which curl does
# not, so each curl run is followed by `sync --data` of the files it wrote (and their
# directory), timed on its own: "curl + sync" is curl with fhir-bulk's durability. Each row
# compares clients that promise the same: fhir-bulk against curl + sync, and
# `fhir-bulk --no-sync` (nothing synced) against curl alone. Needs python3 (data generation
# and timing via wait4), GNU time (peak RSS), nginx and strace (the three installed with
# apt-get when missing, as root).
#
# Every run writes into a directory of its own, removed only at the end: on ext4, creating
# files right after deleting thousands costs the next run extra system time (the kernel's
# `recently_deleted` inode scan), which would charge one client for the other's deletions.
# FRESH_FS=1 (root) writes every run to a new ext4 file system (journaled, as file systems in
# use are) on a loop device in the work directory, so the figures do not depend on what the
# machine's own file system has been through.
#
#   scripts/compare-curl.sh              # builds target/release/fhir-bulk when missing
#   SIZE_MB=200 scripts/compare-curl.sh  # a smaller first case
#   FRESH_FS=1 scripts/compare-curl.sh   # outputs on a fresh ext4 (loop device; root)
#   FHIR_BULK_BIN=path/to/fhir-bulk scripts/compare-curl.sh
set -euo pipefail

root=$(cd "$(dirname "$0")/.." && pwd)
bin=${FHIR_BULK_BIN:-$root/target/release/fhir-bulk}
size_mb=${SIZE_MB:-1024}

if [ ! -x "$bin" ]; then
    (cd "$root" && cargo build --release -p fhir-bulk-cli)
fi
if ! command -v nginx >/dev/null 2>&1 && [ ! -x /usr/sbin/nginx ]; then
    echo "nginx is missing: installing the Debian package" >&2
    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq nginx >/dev/null
fi
nginx=$(command -v nginx || echo /usr/sbin/nginx)
if [ ! -x /usr/bin/time ]; then
    echo "GNU time is missing: installing the Debian package" >&2
    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq time >/dev/null
fi
if ! command -v strace >/dev/null 2>&1; then
    echo "strace is missing: installing the Debian package (for the bytes-written rows)" >&2
    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq strace >/dev/null
fi
command -v curl >/dev/null || { echo "curl is missing" >&2; exit 1; }

work=$(mktemp -d "${TMPDIR:-/tmp}/compare-curl.XXXXXX")
chmod 755 "$work" # nginx's workers run as another user
nginx_pid=
mounted=
cleanup() {
    if [ -n "$nginx_pid" ]; then kill "$nginx_pid" 2>/dev/null || true; wait "$nginx_pid" 2>/dev/null || true; fi
    if [ -n "$mounted" ]; then umount "$mounted" 2>/dev/null || true; fi
    rm -rf "$work"
}
trap cleanup EXIT

# Where the runs write: a directory of their own each (see above).
outputs=$work/runs
if [ "${FRESH_FS:-0}" = 1 ]; then
    truncate -s $(( size_mb * 6 + 4096 ))M "$work/fs.img"
    mkfs.ext4 -q -F "$work/fs.img"
    mkdir -p "$outputs"
    mount -o loop "$work/fs.img" "$outputs"
    mounted=$outputs
    echo "writing to a fresh ext4 on a loop device ($outputs)" >&2
fi
mkdir -p "$outputs"
next_dir() {  # prints a new, empty directory for one run
    mktemp -d "$outputs/run.XXXXXX"
}

port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
base="http://127.0.0.1:$port"

echo "generating the exports in $work ..." >&2
python3 - "$work/www" "$base" "$size_mb" <<'PY'
import gzip, json, os, sys, zlib
www, base, size_mb = sys.argv[1], sys.argv[2], int(sys.argv[3])

def line(i, pad):
    return json.dumps({"resourceType": "Observation", "id": f"o{i}", "status": "final",
                       "code": {"text": "x" * pad}, "subject": {"reference": f"Patient/p{i % 997}"}},
                      separators=(",", ":")) + "\n"

def manifest(name, files):
    out = [{"type": "Observation", "url": f"{base}/{path}", "count": count} for path, count in files]
    body = {"transactionTime": "2026-01-01T00:00:00Z", "request": f"{base}/$export",
            "requiresAccessToken": False, "output": out, "error": []}
    os.makedirs(f"{www}/../manifests/{name}", exist_ok=True)
    with open(f"{www}/../manifests/{name}/manifest.json", "w") as f:
        json.dump(body, f)

def write_files(folder, n, per_file_bytes, pad, gz=False):
    os.makedirs(f"{www}/{folder}", exist_ok=True)
    files, i = [], 0
    for k in range(1, n + 1):
        path = f"{folder}/Observation.{k}.ndjson"
        count, size = 0, 0
        with open(f"{www}/{path}", "w") as f:
            chunk = []
            while size < per_file_bytes:
                l = line(i, pad); i += 1; count += 1; size += len(l); chunk.append(l)
                if len(chunk) >= 4096:
                    f.write("".join(chunk)); chunk = []
            f.write("".join(chunk))
        files.append((path, count))
    return files

big = write_files("id", 7, size_mb * 1_000_000 // 7, 900)
manifest("identity", big)
# The same files for gzip_static: links to the identity files plus their .gz.
os.makedirs(f"{www}/gz", exist_ok=True)
gz = []
for path, count in big:
    name = os.path.basename(path)
    os.symlink(f"{www}/{path}", f"{www}/gz/{name}")
    with open(f"{www}/{path}", "rb") as src, gzip.open(f"{www}/gz/{name}.gz", "wb", compresslevel=6) as dst:
        while True:
            block = src.read(1 << 20)
            if not block:
                break
            dst.write(block)
    gz.append((f"gz/{name}", count))
manifest("gzip", gz)
manifest("small", write_files("small", 2000, 40_000, 300))
tiny = write_files("tiny", 4000, 1, 50)
manifest("tiny500", tiny[:500])
manifest("tiny4000", tiny)
manifest("tiny20000", write_files("tiny20k", 20000, 1, 50))
PY

mkdir -p "$work/tmp"
cat > "$work/nginx.conf" <<CONF
daemon off;
worker_processes 1;
pid $work/nginx.pid;
error_log $work/nginx-error.log;
events { worker_connections 1024; }
http {
    access_log off;
    sendfile on;
    tcp_nopush on;
    keepalive_requests 1000000;
    keepalive_timeout 60s;
    client_body_temp_path $work/tmp/body;
    proxy_temp_path $work/tmp/proxy;
    fastcgi_temp_path $work/tmp/fastcgi;
    uwsgi_temp_path $work/tmp/uwsgi;
    scgi_temp_path $work/tmp/scgi;
    types { application/fhir+ndjson ndjson; application/json json; }
    server {
        listen 127.0.0.1:$port;
        root $work/www;
        location /gz/ { gzip_static on; }
    }
}
CONF
"$nginx" -c "$work/nginx.conf" -p "$work" &
nginx_pid=$!
for _ in $(seq 100); do
    curl -s -o /dev/null "$base/tiny/Observation.1.ndjson" && break
    sleep 0.1
done

# measure OUT_FILE CMD...: runs CMD, writes "wall cpu peak_rss_kib" to OUT_FILE.
# Peak RSS comes from GNU time (Debian package `time`), not from python's wait4: a child's
# ru_maxrss is at least the RSS of the process that spawned it (the kernel keeps the replaced
# memory's high-water mark at exec), which for python is about 14 MiB.
measure() {
    local out=$1; shift
    python3 - "$out" "$work/rss" "$@" <<'PY'
import os, subprocess, sys, time
out, rss_file, cmd = sys.argv[1], sys.argv[2], sys.argv[3:]
start = time.monotonic()
child = subprocess.Popen(["/usr/bin/time", "-f", "%M", "-o", rss_file] + cmd,
                         stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
_, status, usage = os.wait4(child.pid, 0)
wall = time.monotonic() - start
if os.waitstatus_to_exitcode(status) != 0:
    sys.stderr.write(child.stderr.read().decode(errors="replace"))
    sys.exit(f"failed: {' '.join(cmd[:3])} ...")
rss = open(rss_file).read().split()[-1]
with open(out, "w") as f:
    f.write(f"{wall:.3f} {usage.ru_utime + usage.ru_stime:.3f} {rss}\n")
PY
}

# curl_config NAME: a curl config downloading every file of manifest NAME into a directory.
curl_config() {
    python3 - "$work/manifests/$1/manifest.json" "$2" <<'PY'
import json, sys
manifest, dest = sys.argv[1], sys.argv[2]
for i, f in enumerate(json.load(open(manifest))["output"]):
    print(f'url = "{f["url"]}"\noutput = "{dest}/{i}.ndjson"')
PY
}

run_fhir_bulk() {  # NAME [fhir-bulk flags]
    local name=$1; shift
    local out; out=$(next_dir)
    sync # untimed: no run inherits the dirty pages (and their writeback) of the one before
    measure "$work/r.fhir" "$bin" download "$work/manifests/$name/manifest.json" --output-dir "$out" --quiet "$@"
    cat "$work/r.fhir"
}

run_curl() {  # NAME [curl flags]: curl's "wall cpu rss", then those of the sync after it
    local name=$1; shift
    local out; out=$(next_dir)
    curl_config "$name" "$out" > "$work/curl.cfg"
    sync # untimed, as for fhir-bulk; not between curl and its own sync
    measure "$work/r.curl" curl -s --fail --parallel --parallel-max 4 "$@" -K "$work/curl.cfg"
    measure "$work/r.sync" sync --data "$out" "$out"/*
    echo "$(cat "$work/r.curl") $(cat "$work/r.sync")"
}

# Two comparisons a row, each of clients with the same durability: fhir-bulk (every file
# synced before its rename) against curl followed by `sync --data` of its files, and
# `fhir-bulk --no-sync` against curl alone.
printf '\n| export | fhir-bulk wall / CPU / peak RSS | curl + sync wall / CPU | ratio wall, CPU | fhir-bulk --no-sync wall / CPU / peak RSS | curl wall / CPU / peak RSS | ratio wall, CPU |\n'
printf '| --- | --- | --- | ---: | --- | --- | ---: |\n'
row() {  # LABEL NAME [curl flags]
    local label=$1 name=$2; shift 2
    read -r fw fc fm < <(run_fhir_bulk "$name")
    read -r nw nc nm < <(run_fhir_bulk "$name" --no-sync)
    read -r cw cc cm sw sc _ < <(run_curl "$name" "$@")
    python3 -c "
fw, fc, fm, nw, nc, nm, cw, cc, cm, sw, sc = map(float, '$fw $fc $fm $nw $nc $nm $cw $cc $cm $sw $sc'.split())
tw, tc = cw + sw, cc + sc
print(f'| $label | {fw:.2f} s / {fc:.2f} s / {fm/1024:.1f} MiB | {tw:.2f} s / {tc:.2f} s | {fw/tw:.2f}, {fc/max(tc, 1e-3):.2f} '
      f'| {nw:.2f} s / {nc:.2f} s / {nm/1024:.1f} MiB | {cw:.2f} s / {cc:.2f} s / {cm/1024:.1f} MiB | {nw/cw:.2f}, {nc/max(cc, 1e-3):.2f} |')"
}
row "${size_mb} MB in 7 files, identity" identity
row "${size_mb} MB in 7 files, gzip on the wire" gzip --compressed
row "2,000 files of 40 KB" small
row "20,000 one-line files" tiny20000

read -r w500 c500 m500 < <(run_fhir_bulk tiny500)
read -r w4000 c4000 m4000 < <(run_fhir_bulk tiny4000)
python3 -c "
print()
print('fhir-bulk, tiny files: 500 files CPU $c500 s (wall $w500 s, $(( m500 / 1024 )) MiB); 4,000 files CPU $c4000 s (wall $w4000 s, $(( m4000 / 1024 )) MiB)')
print(f'CPU(4,000) / CPU(500) = {$c4000 / max($c500, 1e-3):.1f} (linear: 8; target <= 10)')"

# Bytes written: every write system call of fhir-bulk (strace -ff -y names each descriptor's
# file), summed by file, against the bound data + 1% + 1 MB, where data is the NDJSON and the
# saved manifest.json (the server's own bytes, as received). The HTTP requests written to the
# sockets are shown apart. Untimed: strace slows the process down.
bytes_row() {  # LABEL NAME [fhir-bulk flags]
    local label=$1 name=$2; shift 2
    local out; out=$(next_dir)
    rm -rf "$work/strace"; mkdir -p "$work/strace"
    strace -ff -y -qq -e trace=write,pwrite64,writev -o "$work/strace/t" \
        "$bin" download "$work/manifests/$name/manifest.json" --output-dir "$out" --quiet --no-sync "$@" \
        >/dev/null 2>&1
    python3 - "$work/strace" "$label" <<'PY'
import collections, glob, re, sys
folder, label = sys.argv[1], sys.argv[2]
call = re.compile(r'^(?:write|pwrite64|writev)\(\d+<([^>]*)>.*\)\s*=\s*(\d+)')
by = collections.Counter()
for path in glob.glob(folder + "/t.*"):
    for line in open(path, errors="replace"):
        m = call.match(line)
        if not m:
            continue
        target, n = m.group(1), int(m.group(2))
        if target.startswith("socket:"):
            by["sockets"] += n
        elif target.startswith(("pipe:", "anon_inode:", "/dev/")):
            continue
        elif target.endswith(".part"):
            by["ndjson"] += n
        elif target.endswith("manifest.json.tmp") or re.search(r"manifest\.\d+\.json\.tmp$", target):
            by["manifest"] += n
        elif target.endswith("log.ndjson"):
            by["log"] += n
        elif target.endswith("fhir-bulk-job.journal"):
            by["journal"] += n
        elif target.endswith("fhir-bulk-job.json.tmp"):
            by["state"] += n
        else:
            by["other"] += n
data = by["ndjson"] + by["manifest"]
own = by["log"] + by["journal"] + by["state"] + by["other"]
bound = data // 100 + 1_000_000
mb = lambda n: f"{n / 1e6:.2f} MB"
print(f"| {label} | {mb(data)} | {mb(own)} (log {mb(by['log'])}, journal {mb(by['journal'])}, "
      f"state {mb(by['state'])}) | {mb(bound)} | {'yes' if own <= bound else 'NO'} | {mb(by['sockets'])} |")
PY
}
printf '\n| bytes written by fhir-bulk | data (NDJSON + manifest) | its own files | bound: 1%% + 1 MB | within | HTTP requests |\n'
printf '| --- | ---: | ---: | ---: | --- | ---: |\n'
bytes_row "2,000 files of 40 KB" small
bytes_row "2,000 files of 40 KB, --log-files errors" small --log-files errors
bytes_row "4,000 one-line files" tiny4000
bytes_row "4,000 one-line files, --log-files errors" tiny4000 --log-files errors
bytes_row "20,000 one-line files, --log-files errors" tiny20000 --log-files errors
