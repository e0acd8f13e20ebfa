"""Engines that run the library's work units past one process: the local engine is the default (in
:mod:`zeroshot.extraction`); :mod:`.session` connects to Ray, the optional distributed engine."""
