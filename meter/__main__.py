from meter.cli import main

main()
