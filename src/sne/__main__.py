from sne.cli import main

main()
