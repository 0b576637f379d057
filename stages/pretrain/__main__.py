from pipeline.cli import stage_main

stage_main("pretrain")
