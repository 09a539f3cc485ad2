"""The benchmark the project owns: MyProxy against nginx and HAProxy, on this machine.

``python bench/run.py [--quick]`` measures throughput, latency, CPU per request and memory;
``python bench/memory.py`` checks memory over large bodies and many idle connections;
``python bench/profile.py`` samples where MyProxy spends its CPU under load;
``python bench/drill.py`` is the failover drill (standalone). The README's
"Performance" section says how to read the results. Importing this package starts nothing.
"""
