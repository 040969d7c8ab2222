"""Demo variant: the same small ResNet trained end to end from images (no feature cache).

  python run.py train --config configs/demo_finetune.py --workdir runs/demo_finetune

Every step decodes, crops and resizes the images and back-propagates through the backbone, so
on 2 CPU cores it sees about 30x fewer triplets per second than configs/demo.py; see the README
for its measured metrics next to the cached, frozen demo.
"""

from configs import demo


def get_config():
  config = demo.get_config()
  config.data.source = "images"
  config.model.freeze_backbone = False
  config.loss.in_batch_negatives = False
  config.input.batch_size = 64
  config.optimizer.learning_rate = 2e-3
  config.train.num_steps = 1200
  config.train.log_every_steps = 100
  config.train.checkpoint_every_steps = 400
  return config
