"""What a run is: its curriculum of stages and optimizer, its train state, and what it leaves
in its workdir (the resolved config, checkpoints, TensorBoard summaries), with soups of its
checkpoints and the parameters a fresh run starts from (init_from, pretrained towers).

gemb.train writes a run; gemb.eval, gemb.export and gemb.bench read or rebuild one. This
package imports neither gemb.train nor gemb.eval.
"""
