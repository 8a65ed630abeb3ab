"""The command bodies: parse results -> call the library -> print tables and lines, word errors as flags."""
