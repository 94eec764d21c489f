"""`python -m llama_fdl COMMAND [flags]`: the same as the `llama-fdl` command."""

from llama_fdl.commands import main

if __name__ == "__main__":
    main()
