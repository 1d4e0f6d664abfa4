from dagster_project.profiles import main

main()
