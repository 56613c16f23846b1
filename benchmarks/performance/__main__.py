from benchmarks.performance import main

main()
