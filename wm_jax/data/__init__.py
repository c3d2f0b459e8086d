"""wm_jax.data: clips of driving data as numpy records, and the Grain pipeline that batches them.

  schema.py         the batch contract: keys, shapes, dtypes; validate(record)
  actions.py        the ego's motion: bicycle model, future_actions (trajectory, goal point,
                    command from ego poses), controls_to_record_actions (from speed / steering)
  splits.py         in_validation(key, val_fraction): train / validation split by name
  records.py        CheckedSource (validated reads), BadRecordError, the bad-record marker
  layout_render.py  boxes -> the 6-channel layout image
  synthetic/        the procedural world; synthetic/source.py SyntheticSource renders clip i
  video.py          VideoClipSource: folders of mp4s; image resize / crop helpers
  nuscenes.py       ClipSource: nuScenes v1.0 tables and images
  tfds_cache.py     data_source(name, split): a prepared ArrayRecord cache as a source
  sources.py        make_source(config.data, split): source by name; ListSource (in memory)
  tfds_builders.py  TFDS builders writing any source's clips (or their latents) as ArrayRecord
  bad_records.py    ReportingIterator: batches the records, drops and counts bad ones
  pipeline.py       make_dataset / make_iterator: validated, shuffled, sharded, batched records

Each module of the package imports only modules above it in this list; config.data's keys and
defaults are wm_jax.defaults.data().
"""
