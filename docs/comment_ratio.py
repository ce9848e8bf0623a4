"""Comment/docstring lines against code lines, and the share of lines over 100 characters.

A line counts as comment/docstring when it is a full-line comment or lies inside a module, class or
function docstring; code lines are the other non-blank lines. Usage:

    python docs/comment_ratio.py scoresde/sde.py scoresde/losses.py ...
"""

import ast
import io
import sys
import tokenize


def measure(path):
    """``(comment_or_doc_lines, code_lines, lines_over_100, lines)`` of one Python file."""
    with open(path) as f:
        src = f.read()
    lines = src.splitlines()
    doc = set()
    for node in ast.walk(ast.parse(src)):
        if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)):
            body = node.body
            if (
                body
                and isinstance(body[0], ast.Expr)
                and isinstance(body[0].value, ast.Constant)
                and isinstance(body[0].value.value, str)
            ):
                doc.update(range(body[0].lineno, body[0].end_lineno + 1))
    comments = {
        tok.start[0]
        for tok in tokenize.generate_tokens(io.StringIO(src).readline)
        if tok.type == tokenize.COMMENT and lines[tok.start[0] - 1].lstrip().startswith("#")
    }
    prose = doc | comments
    code = sum(1 for i, line in enumerate(lines, 1) if line.strip() and i not in prose)
    return len(prose), code, sum(len(line) > 100 for line in lines), len(lines)


def main(paths):
    total = [0, 0, 0, 0]
    for path in paths:
        r = measure(path)
        total = [a + b for a, b in zip(total, r, strict=True)]
        print(f"{path:45s} comment/doc {r[0]:5d} code {r[1]:5d} ratio {r[0] / max(r[1], 1):.2f} long {r[2]}")
    print(
        f"TOTAL comment/doc {total[0]} code {total[1]} ratio {total[0] / max(total[1], 1):.3f} "
        f"lines>100 {total[2]}/{total[3]} = {100 * total[2] / max(total[3], 1):.1f}%"
    )


if __name__ == "__main__":
    main(sys.argv[1:])
