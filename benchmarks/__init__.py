"""Benchmarks: what the platform costs on top of the parts it is made of (``make bench``).

Every figure is measured beside a bare baseline in the same run, on the same PostgreSQL and
RabbitMQ, because on these shared machines absolute times drift by a third or more between runs
while ratios within one run hold.
"""
