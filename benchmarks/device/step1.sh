# Call 1: stash chunk 1, install the small wheels, show the GPU
mkdir -p /root/stash && cp .xfer/c1/* /root/stash/ && cd /root/stash && \
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site \
  cffi-*.whl espeakng_loader-*.whl gguf-*.whl jiwer-*.whl pycparser-*.whl rapidfuzz-*.whl soundfile-*.whl transformers-*.whl
nvidia-smi -L; python3 -c "import torch; print(torch.__version__, torch.cuda.is_available())"; nproc; ls /root/stash | wc -l
