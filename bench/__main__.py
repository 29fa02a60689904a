from bench.run import main
from pipeline.errors import run

run(main)
