"""Training loops and fine-tuning strategies; ``engine.yolo`` is the only place ultralytics is imported."""
