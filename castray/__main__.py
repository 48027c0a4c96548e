from castray.cli import main

main()
