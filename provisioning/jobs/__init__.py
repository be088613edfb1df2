"""Jobs: the state machine, what each job type does, and the three parts that write jobs
(requests from API clients and operators, the worker's execution, the sweeper's repairs), with
the runner that takes a job through its steps. Imports every layer below operations."""
