"""A static check of emitted Triton modules: global memory a program stores and then loads back
must be ordered by a `tl.debug_barrier()` between the two (docs/backends.md, "Scratch read
back in one program").

For each kernel (a `@triton.jit` function no other one calls), the statements are walked in
program order: helpers inlined (their pointer parameters bound to the caller's arguments),
every loop body walked twice (a store in one iteration, a load in the next), both arms of an
`if` walked, each under its test's text. A pointer's *base* is the kernel's pointer parameter
(named `ptr...`) it is computed from (`ptr_dk + offs`, or a name assigned from such an
expression). A `tl.load` of a base that a `tl.store` (or `tl.atomic_*`) wrote before is a
hazard unless a barrier lies between them on the load's path (a barrier under `if X:` orders
the loads under `if X:`, of any statement with that test) or on every path of the store (a
barrier after the store under the store's own tests, in no loop the store is outside: a store
under `if A and not B:` followed there by a barrier is ordered for a load under `if A:`), or
the two sit on two arms of one
test (the kernels branch on constexprs: never both), or they are in two iterations of a loop
and both addresses depend on its variable: each iteration then addresses its own block (a
chunk, a key block), as the kernels here do; the check trusts that.

It sees only what names show: two pointer parameters bound to one tensor by the host, or a
helper returning a pointer, are outside it."""
import ast
import itertools

LOOP = "@loop"          # dependence tokens: a kernel's pointer parameter, or LOOP + id


def _is_jit(fn):
    return any(ast.unparse(d).startswith("triton.jit") for d in fn.decorator_list)


class _Walk:
    """Memory events of one kernel: (kind, base, address tokens, context, line, function); the
    context: the enclosing loops' copies ("loop", id, 0 or 1) and if arms ("arm", test, taken)."""

    def __init__(self, funcs, cache):
        self.funcs = funcs
        self.cache = cache              # id(expression) -> its names, or its calls in order
        self.ids = itertools.count()
        self.events = []

    def function(self, fn, bind, copies, depth=0):
        env = {a.arg: bind.get(a.arg, frozenset()) for a in fn.args.args}
        self._body(fn, fn.body, env, copies, depth)
        return env

    def _tokens(self, env, expr):
        key = ("names", id(expr))
        if key not in self.cache:
            self.cache[key] = {n.id for n in ast.walk(expr) if isinstance(n, ast.Name)}
        out = set()
        for name in self.cache[key]:
            out |= env.get(name, frozenset())
        return frozenset(out)

    def _calls(self, expr):
        """The calls of `expr` in evaluation order (a call's arguments before the call)."""
        key = ("calls", id(expr))
        if key not in self.cache:
            calls = []

            def visit(node):
                for child in ast.iter_child_nodes(node):
                    visit(child)
                if isinstance(node, ast.Call):
                    calls.append((node, ast.unparse(node.func)))
            visit(expr)
            self.cache[key] = calls
        return self.cache[key]

    def _expr(self, fn, expr, env, copies, depth):
        for call, name in self._calls(expr):
            if name in ("tl.load", "tl.store") or name.startswith("tl.atomic_"):
                tokens = self._tokens(env, call.args[0])
                kind = "load" if name == "tl.load" else "store"
                for base in (t for t in tokens if not t.startswith(LOOP)):
                    self.events.append((kind, base, tokens, copies, call.lineno, fn.name))
            elif name == "tl.debug_barrier":
                self.events.append(("barrier", None, frozenset(), copies, call.lineno, fn.name))
            elif name in self.funcs and depth < 16:
                callee = self.funcs[name]
                bind = {p.arg: self._tokens(env, a) for p, a in zip(callee.args.args, call.args)}
                bind.update({k.arg: self._tokens(env, k.value) for k in call.keywords if k.arg})
                self.function(callee, bind, copies, depth + 1)

    def _body(self, fn, body, env, copies, depth):
        for stmt in body:
            if isinstance(stmt, (ast.For, ast.While)):
                loop = LOOP + str(next(self.ids))
                head = stmt.iter if isinstance(stmt, ast.For) else stmt.test
                self._expr(fn, head, env, copies, depth)
                if isinstance(stmt, ast.For):
                    for node in ast.walk(stmt.target):
                        if isinstance(node, ast.Name):
                            env[node.id] = self._tokens(env, head) | {loop}
                for copy in (0, 1):
                    self._body(fn, stmt.body, env, copies + (("loop", loop, copy),), depth)
            elif isinstance(stmt, ast.If):
                self._expr(fn, stmt.test, env, copies, depth)
                other, test = dict(env), ast.unparse(stmt.test)
                self._body(fn, stmt.body, env, copies + (("arm", test, True),), depth)
                self._body(fn, stmt.orelse, other, copies + (("arm", test, False),), depth)
                for name, tokens in other.items():
                    env[name] = env.get(name, frozenset()) | tokens
            elif isinstance(stmt, (ast.Assign, ast.AugAssign, ast.AnnAssign)):
                if stmt.value is None:
                    continue
                self._expr(fn, stmt.value, env, copies, depth)
                tokens = self._tokens(env, stmt.value)
                if isinstance(stmt.value, ast.Call):        # a call's results: offsets, masks,
                    tokens = frozenset(t for t in tokens if t.startswith(LOOP))   # no pointer
                targets = stmt.targets if isinstance(stmt, ast.Assign) else [stmt.target]
                for target in targets:
                    for node in ast.walk(target):
                        if isinstance(node, ast.Name):
                            keep = env.get(node.id, frozenset()) \
                                if isinstance(stmt, ast.AugAssign) else frozenset()
                            env[node.id] = keep | tokens
            else:
                for child in ast.iter_child_nodes(stmt):
                    if isinstance(child, ast.expr):
                        self._expr(fn, child, env, copies, depth)


def _per_iteration(store, load):
    """A store in one iteration of a loop and a load in the next, both addressed by the loop's
    variable (each iteration its own block)."""
    loops = [(e[1:] for e in event[3] if e[0] == "loop") for event in (store, load)]
    for (loop_s, copy_s), (loop_l, copy_l) in zip(*loops):
        if loop_s != loop_l:
            return False
        if copy_s != copy_l:
            return loop_s in store[2] and loop_s in load[2]
    return False


def _arms(event):
    return {e[1:] for e in event[3] if e[0] == "arm"}


def _loops(event):
    return {e[1] for e in event[3] if e[0] == "loop"}


def _orders(barrier, store, load):
    """A barrier after the store orders the load when it lies on the load's path (its tests a
    subset of the load's), or on every path of the store (its tests a subset of the store's and
    no loop the store is outside: whenever the store ran, the barrier ran after it)."""
    return _arms(barrier) <= _arms(load) or (
        _arms(barrier) <= _arms(store) and _loops(barrier) <= _loops(store))


def _exclusive(store, load):
    """On two arms of one condition (the constexpr branches of a kernel: never both)."""
    return any((test, not taken) in _arms(load) for test, taken in _arms(store))


def hazards(code):
    """[(kernel, base, store line, load line)]: loads of a base stored before with no barrier
    between on the load's path (a barrier under `if X:` orders the loads under `if X:`)."""
    tree = ast.parse(code)
    funcs = {f.name: f for f in tree.body if isinstance(f, ast.FunctionDef) and _is_jit(f)}
    called = {ast.unparse(n.func) for f in funcs.values() for n in ast.walk(f)
              if isinstance(n, ast.Call) and ast.unparse(n.func) in funcs}
    found, cache = set(), {}
    for name in sorted(set(funcs) - called):
        kernel = funcs[name]
        walk = _Walk(funcs, cache)
        walk.function(kernel, {a.arg: frozenset({a.arg}) for a in kernel.args.args
                               if a.arg.startswith("ptr")}, ())
        stored = {}             # base -> stores not yet ordered for every path
        for event in walk.events:
            kind, base = event[0], event[1]
            if kind == "store":
                stored.setdefault(base, []).append([event, []])
            elif kind == "barrier":
                for pending in stored.values():
                    for entry in pending:
                        entry[1].append(event)
            else:
                for store, barriers in stored.get(base, []):
                    if any(_orders(barrier, store, event) for barrier in barriers):
                        continue
                    if not _per_iteration(store, event) and not _exclusive(store, event):
                        found.add((name, base, store[4], event[4]))
    return sorted(found)
