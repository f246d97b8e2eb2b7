from overseer_plan.cli import main

main()
