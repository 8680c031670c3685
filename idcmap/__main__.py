from idcmap.jobs.cli import main

main()
