from shoal.cli import main

main(prog_name="shoal")
