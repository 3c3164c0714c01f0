"""The top-level modules import each other without cycles, so they can be read bottom-up (the README's file tree
gives the order). An import inside a function counts; only a script's own `if __name__ == '__main__':` block may
reach up (`python model.py --memory` drives memory.py), since importing a module never runs it."""
import ast
import glob
import os

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
MODULES = {os.path.basename(f)[:-3]: f for f in glob.glob(os.path.join(ROOT, '*.py'))}


def is_main_block(node):
    """`if __name__ == '__main__':`"""
    t = node.test if isinstance(node, ast.If) else None
    return (isinstance(t, ast.Compare) and isinstance(t.left, ast.Name) and t.left.id == '__name__'
            and any(isinstance(c, ast.Constant) and c.value == '__main__' for c in t.comparators))


def local_imports(source: str) -> set:
    """The repository's modules that `source` imports anywhere (functions included) outside its __main__ block."""
    found = set()

    def visit(node):
        if is_main_block(node):
            return
        if isinstance(node, ast.Import):
            found.update(a.name.split('.')[0] for a in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            found.add(node.module.split('.')[0])
        for child in ast.iter_child_nodes(node):
            visit(child)
    visit(ast.parse(source))
    return found & set(MODULES)


def find_cycle(graph: dict) -> list | None:
    """One cycle of `graph` (module -> the modules it imports) as a list [a, b, ..., a], or None (depth-first)."""
    state, stack = {}, []

    def dfs(m):
        state[m], stack[len(stack):] = 'open', [m]
        for n in sorted(graph[m]):
            if state.get(n) == 'open':
                return stack[stack.index(n):] + [n]
            if n not in state and (cycle := dfs(n)):
                return cycle
        state[m] = 'done'
        stack.pop()
        return None
    for m in sorted(graph):
        if m not in state and (cycle := dfs(m)):
            return cycle
    return None


def test_find_cycle_sees_a_cycle_through_a_function_level_import():
    a = "import b\n"
    b = "def f():\n    import c\n"
    c = "from a import x\nif __name__ == '__main__':\n    import b\n"
    graph = {'a': {'b'}, 'b': {'c'}, 'c': {'a'}}
    MODULES.update(dict.fromkeys('abc', ''))  # the names count as local for this check
    try:
        assert {m: local_imports(s) for m, s in zip('abc', (a, b, c))} == graph
    finally:
        for m in 'abc':
            MODULES.pop(m)
    assert find_cycle(graph) == ['a', 'b', 'c', 'a']
    assert find_cycle({'a': {'b'}, 'b': set(), 'c': {'a', 'b'}}) is None
    assert local_imports("if __name__ == '__main__':\n    import os\n") == set()


def test_the_top_level_modules_have_no_import_cycle():
    graph = {m: local_imports(open(f).read()) - {m} for m, f in MODULES.items()}
    cycle = find_cycle(graph)
    assert cycle is None, f"import cycle: {' -> '.join(cycle)}"
