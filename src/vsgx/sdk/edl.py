"""EDL (Enclave Definition Language) files, as Intel's edger8r reads them.

ECALL and OCALL indices are computed as edger8r does (sdk/edger8r/linux
CodeGen.ml): a file's own functions first, in declaration order, then each
imported file's selected functions in the order of its ``from ... import``
statements, depth-first; a function reached twice keeps its first place.
"""

from __future__ import annotations

import functools
import re
import shutil
import subprocess
from dataclasses import dataclass, field
from pathlib import Path

from vsgx.errors import VsgxError

STANDARD_EDL_DIR = Path(__file__).resolve().parent / "edl"
# One buffer of an ECALL or OCALL: beyond this a size or count is refused,
# in the EDL when it is a number, at the call when it is a parameter.
MAX_BUFFER = 1 << 28
# edger8r's own type keywords (Lexer.mll); any other name is "foreign".
BUILTIN_TYPES = frozenset({
    "char", "short", "int", "long", "float", "double", "void", "unsigned", "signed",
    "int8_t", "int16_t", "int32_t", "int64_t", "uint8_t", "uint16_t", "uint32_t",
    "uint64_t", "size_t", "wchar_t"})


class EdlError(VsgxError):
    """An EDL file that does not parse."""


@dataclass(frozen=True)
class CType:
    """A parameter or member type: base name, pointer depth, array dims."""

    base: str  # e.g. "int", "unsigned long long", "struct foo", "sgx_report_t"
    pointers: int = 0
    const: bool = False
    dims: tuple[int, ...] = ()

    @property
    def is_pointer(self) -> bool:
        return self.pointers > 0

    @property
    def foreign(self) -> bool:
        """A bare user-defined type name (a typedef the EDL only includes)."""
        return not self.pointers and not self.dims and not any(
            word in BUILTIN_TYPES for word in self.base.split()) and not self.base.startswith(
            ("struct ", "union ", "enum "))

    def pointee(self) -> CType:
        return CType(self.base, self.pointers - 1, self.const)

    def __str__(self) -> str:
        text = ("const " if self.const else "") + self.base + " " + "*" * self.pointers
        return text.strip() + "".join(f"[{d}]" for d in self.dims)


@dataclass(frozen=True)
class Param:
    name: str
    type: CType
    direction_in: bool = False
    direction_out: bool = False
    user_check: bool = False
    string: bool = False
    wstring: bool = False
    size: str | None = None  # a number or the name of another parameter
    count: str | None = None
    isptr: bool = False
    isary: bool = False
    readonly: bool = False
    sizefunc: str | None = None  # SDK 1.x: a function computes the buffer's size

    @property
    def pointer_like(self) -> bool:
        """Passed as an address in the ms struct: a pointer, an array, a
        foreign pointer ([isptr]) or a foreign array type ([isary])."""
        return self.type.is_pointer or bool(self.type.dims) or self.isptr or self.isary

    @property
    def checked_pointer(self) -> bool:
        """A pointer the bridges copy ([in], [out], [in, out])."""
        return self.pointer_like and (self.direction_in or self.direction_out)

    @property
    def references(self) -> tuple[str, ...]:
        """The parameters its size= and count= name."""
        return tuple(ref for ref in (self.size, self.count)
                     if ref is not None and not _is_number(ref))


@dataclass(frozen=True)
class Function:
    name: str
    returns: CType
    params: tuple[Param, ...]
    trusted: bool
    public: bool = False
    allow: tuple[str, ...] = ()
    propagate_errno: bool = False
    switchless: bool = False
    source: str = ""


@dataclass(frozen=True)
class Member:
    name: str
    type: CType
    size: str | None = None  # deep copy of a pointer member (SDK 2.x)
    count: str | None = None


@dataclass(frozen=True)
class Composite:
    kind: str  # struct / union
    name: str
    members: tuple[Member, ...]


@dataclass
class EdlFile:
    path: Path
    includes: list[str] = field(default_factory=list)
    imports: list[tuple[str, tuple[str, ...] | None]] = field(default_factory=list)  # None: *
    trusted: list[Function] = field(default_factory=list)
    untrusted: list[Function] = field(default_factory=list)
    composites: dict[str, Composite] = field(default_factory=dict)
    enums: dict[str, int] = field(default_factory=dict)
    enum_types: set[str] = field(default_factory=set)


@dataclass
class Enclave:
    """The combined interface of an enclave: ECALLs and OCALLs with indices."""

    ecalls: list[Function]
    ocalls: list[Function]
    composites: dict[str, Composite]
    enums: dict[str, int]
    enum_types: set[str]
    files: list[Path]

    def ecall(self, name: str) -> tuple[int, Function]:
        for index, function in enumerate(self.ecalls):
            if function.name == name:
                return index, function
        raise EdlError(f"no ECALL named {name!r}")

    def ocall(self, name: str) -> tuple[int, Function]:
        for index, function in enumerate(self.ocalls):
            if function.name == name:
                return index, function
        raise EdlError(f"no OCALL named {name!r}")


# -- lexing ------------------------------------------------------------------
_TOKEN = re.compile(r"""
    (?P<ws>\s+)
  | (?P<string>"[^"\n]*")
  | (?P<number>0[xX][0-9a-fA-F]+|\d+)
  | (?P<ident>[A-Za-z_][A-Za-z_0-9]*)
  | (?P<punct>[{}()\[\];,*=<>+\-/])
""", re.VERBOSE)

_TYPE_WORDS = {"unsigned", "signed", "char", "short", "int", "long", "float", "double", "void"}


@functools.lru_cache(maxsize=256)
def preprocess(text: str) -> str:
    """C preprocessing (edger8r runs ``gcc -E``): through the system's cpp
    when there is one; otherwise comments and directives are dropped."""
    cc = shutil.which("gcc") or shutil.which("cc") or shutil.which("cpp")
    if cc:
        args = [cc, "-x", "c", "-E", "-P", "-"] if not cc.endswith("cpp") else [cc, "-P"]
        result = subprocess.run(args, input=text, capture_output=True, text=True, check=False)
        if result.returncode == 0:
            return result.stdout
    text = re.sub(r"/\*.*?\*/", " ", text, flags=re.S)
    text = re.sub(r"//[^\n]*", " ", text)
    return "\n".join(line for line in text.splitlines() if not line.lstrip().startswith("#"))


def tokenize(text: str, source: str) -> list[str]:
    tokens = []
    position = 0
    while position < len(text):
        match = _TOKEN.match(text, position)
        if match is None:
            line = text.count("\n", 0, position) + 1
            raise EdlError(f"{source}:{line}: unexpected character {text[position]!r}")
        if match.lastgroup != "ws":
            tokens.append(match.group())
        position = match.end()
    return tokens


class _Parser:
    def __init__(self, tokens: list[str], source: str):
        self.tokens = tokens
        self.position = 0
        self.source = source

    def peek(self, offset: int = 0) -> str:
        index = self.position + offset
        return self.tokens[index] if index < len(self.tokens) else ""

    def next(self) -> str:
        token = self.peek()
        if not token:
            raise EdlError(f"{self.source}: unexpected end of file")
        self.position += 1
        return token

    def expect(self, token: str) -> None:
        found = self.next()
        if found != token:
            raise EdlError(f"{self.source}: expected {token!r}, found {found!r}")

    def accept(self, token: str) -> bool:
        if self.peek() == token:
            self.position += 1
            return True
        return False

    def identifier(self) -> str:
        token = self.next()
        if not re.fullmatch(r"[A-Za-z_]\w*", token):
            raise EdlError(f"{self.source}: expected a name, found {token!r}")
        return token

    # enclave { items } ;
    def parse(self, edl: EdlFile) -> None:
        self.expect("enclave")
        self.expect("{")
        while not self.accept("}"):
            self.item(edl)
        self.accept(";")
        if self.peek():
            raise EdlError(f"{self.source}: text after the enclave block: {self.peek()!r}")

    def item(self, edl: EdlFile) -> None:
        token = self.next()
        if token == "include":
            edl.includes.append(self.next().strip('"'))
            self.accept(";")
        elif token == "from":
            name = self.next().strip('"')
            self.expect("import")
            if self.accept("*"):
                edl.imports.append((name, None))
            else:
                names = [self.identifier()]
                while self.accept(","):
                    names.append(self.identifier())
                edl.imports.append((name, tuple(names)))
            self.expect(";")
        elif token in ("struct", "union"):
            name = self.identifier()
            edl.composites[name] = Composite(token, name, tuple(self.members(name)))
            self.expect(";")
        elif token == "enum":
            self.enum(edl)
        elif token in ("trusted", "untrusted"):
            self.expect("{")
            while not self.accept("}"):
                if self.accept("include"):
                    edl.includes.append(self.next().strip('"'))
                    self.accept(";")
                    continue
                function = self.function(trusted=token == "trusted")
                (edl.trusted if token == "trusted" else edl.untrusted).append(function)
            self.expect(";")
        else:
            raise EdlError(f"{self.source}: unexpected {token!r} in the enclave block")

    def enum(self, edl: EdlFile) -> None:
        name = "" if self.peek() == "{" else self.identifier()
        self.expect("{")
        value = 0
        while not self.accept("}"):
            member = self.identifier()
            if self.accept("="):
                value = self.constant(edl)
            edl.enums[member] = value
            value += 1
            self.accept(",")
        self.expect(";")
        if name:
            edl.enum_types.add(name)

    def constant(self, edl: EdlFile) -> int:
        negative = self.accept("-")
        token = self.next()
        if token in edl.enums:
            value = edl.enums[token]
        else:
            try:
                value = int(token, 0)
            except ValueError:
                raise EdlError(f"{self.source}: {token!r} is not a constant") from None
        return -value if negative else value

    def members(self, composite: str) -> list[Member]:
        self.expect("{")
        members = []
        while not self.accept("}"):
            attributes = self.attributes()
            ctype, name = self.declaration()
            unknown = set(attributes) - {"size", "count"}
            if unknown:
                raise EdlError(f"{self.source}: {composite}.{name}: attribute(s) "
                               f"{', '.join(sorted(unknown))} are not allowed on a member")
            member = Member(name, ctype, _text(attributes.get("size")),
                            _text(attributes.get("count")))
            if (member.size or member.count) and not ctype.is_pointer:
                raise EdlError(f"{self.source}: {composite}.{name}: size/count on a member "
                               "that is not a pointer")
            members.append(member)
            self.expect(";")
        names = {m.name: m for m in members}
        for member in members:
            for ref in (member.size, member.count):
                if ref is None:
                    continue
                _check_number(self.source, f"{composite}.{member.name}", ref)
                if not _is_number(ref) and (ref not in names or names[ref].type.is_pointer):
                    raise EdlError(f"{self.source}: {composite}.{member.name}: size/count "
                                   f"{ref!r} is not a number or an integer member")
        return members

    def attributes(self) -> dict[str, str | bool]:
        attributes: dict[str, str | bool] = {}
        if not self.accept("["):
            return attributes
        while True:
            name = self.identifier()
            if self.accept("="):
                value = self.next()
                attributes[name] = value
            else:
                attributes[name] = True
            if self.accept("]"):
                return attributes
            self.expect(",")

    def base_type(self) -> tuple[str, bool]:
        const = False
        words: list[str] = []
        while True:
            token = self.peek()
            if token == "const":
                const = True
                self.position += 1
            elif token in ("struct", "union", "enum"):
                self.position += 1
                words.append(f"{token} {self.identifier()}")
                break
            elif token in _TYPE_WORDS:
                words.append(self.next())
                if self.peek() not in _TYPE_WORDS:
                    break
            elif not words:
                words.append(self.identifier())
                break
            else:
                break
        if self.accept("const"):
            const = True
        return " ".join(words), const

    def declaration(self) -> tuple[CType, str]:
        base, const = self.base_type()
        pointers = 0
        while self.accept("*"):
            pointers += 1
            self.accept("const")
        name = self.identifier()
        dims = []
        while self.accept("["):
            token = self.next()
            try:
                dim = int(token, 0)
            except ValueError:
                raise EdlError(f"{self.source}: array dimension {token!r} of {name} must be "
                               "a number") from None
            if dim <= 0:
                raise EdlError(f"{self.source}: array {name} has a dimension of {dim}")
            dims.append(dim)
            self.expect("]")
        elements = 1
        for dim in dims:
            elements *= dim
        if elements > MAX_BUFFER:
            raise EdlError(f"{self.source}: array {name} has {elements} elements")
        return CType(base, pointers, const, tuple(dims)), name

    def function(self, trusted: bool) -> Function:
        attributes = self.attributes() if not trusted else {}
        public = trusted and self.accept("public")
        base, const = self.base_type()
        pointers = 0
        while self.accept("*"):
            pointers += 1
        name = self.identifier()
        self.expect("(")
        params: list[Param] = []
        if self.peek() == "void" and self.peek(1) == ")":
            self.position += 1
        while not self.accept(")"):
            params.append(self.param(name))
            if self.peek() != ")":
                self.expect(",")
        allow: tuple[str, ...] = ()
        propagate = switchless = False
        while not self.accept(";"):
            token = self.next()
            if token == "allow" and not trusted:
                self.expect("(")
                names = []
                while not self.accept(")"):
                    names.append(self.identifier())
                    self.accept(",")
                allow = tuple(names)
            elif token == "propagate_errno" and not trusted:
                propagate = True
            elif token == "transition_using_threads":
                switchless = True
            else:
                raise EdlError(f"{self.source}: unexpected {token!r} after {name}()")
        del attributes
        _check_references(self.source, name, params)
        return Function(name, CType(base, pointers, const), tuple(params), trusted, public,
                        allow, propagate, switchless, self.source)

    def param(self, function: str) -> Param:
        attributes = self.attributes()
        ctype, name = self.declaration()
        known = {"in", "out", "user_check", "string", "wstring", "size", "count", "isptr",
                 "isary", "readonly", "sizefunc"}
        unknown = set(attributes) - known
        if unknown:
            raise EdlError(f"{self.source}: {function}({name}): unknown attribute(s) "
                           f"{', '.join(sorted(unknown))}")
        sizefunc = attributes.get("sizefunc")
        if sizefunc is True or (isinstance(sizefunc, str)
                                and not re.fullmatch(r"[A-Za-z_]\w*", sizefunc)):
            raise EdlError(f"{self.source}: {function}({name}): sizefunc must name a function")
        param = Param(name, ctype, bool(attributes.get("in")), bool(attributes.get("out")),
                      bool(attributes.get("user_check")), bool(attributes.get("string")),
                      bool(attributes.get("wstring")),
                      _text(attributes.get("size")), _text(attributes.get("count")),
                      bool(attributes.get("isptr")), bool(attributes.get("isary")),
                      bool(attributes.get("readonly")) or ctype.const, _text(sizefunc))
        _check_param(self.source, function, param)
        return param


def _text(value: str | bool | None) -> str | None:
    return value if isinstance(value, str) else None


def _is_number(text: str) -> bool:
    try:
        int(text, 0)
    except ValueError:
        return False
    return True


def _check_number(source: str, where: str, ref: str) -> None:
    if _is_number(ref) and not 0 < int(ref, 0) <= MAX_BUFFER:
        raise EdlError(f"{source}: {where}: size/count {ref} is out of range "
                       f"(1..{MAX_BUFFER})")


def _check_param(source: str, function: str, p: Param) -> None:
    """The attribute rules of edger8r's parser (Parser.mly get_ptr_attr,
    check_ptr_attr), which refuses these EDLs too."""
    where = f"{source}: {function}({p.name})"
    ctype = p.type
    direction = p.direction_in or p.direction_out
    sized = p.size is not None or p.count is not None or p.sizefunc is not None
    if p.isary and not ctype.foreign:
        raise EdlError(f"{where}: [isary] is for a user-defined type name, not {ctype}")
    if p.isptr and not (ctype.foreign or ctype.is_pointer):  # SDK 1.x took a redundant one
        raise EdlError(f"{where}: [isptr] is for a user-defined type name, not {ctype}")
    if p.isary and p.isptr:
        raise EdlError(f"{where}: [isary] excludes [isptr]")
    if p.isary and (sized or p.string or p.wstring):
        raise EdlError(f"{where}: a foreign array ([isary]) takes no size, count, sizefunc "
                       "or string attribute")
    if not p.pointer_like and (direction or p.user_check or sized or p.string or p.wstring):
        raise EdlError(f"{where}: pointer attributes on {ctype}, which is not a pointer (a "
                       "pointer typedef needs [isptr], an array typedef [isary])")
    if p.pointer_like and not (direction or p.user_check):
        raise EdlError(f"{where}: a pointer needs [in], [out] or [user_check]")
    if p.user_check and direction:
        raise EdlError(f"{where}: [user_check] excludes [in]/[out]")
    if p.string and p.wstring:
        raise EdlError(f"{where}: [string] excludes [wstring]")
    if (p.string or p.wstring) and not p.direction_in:
        raise EdlError(f"{where}: [string] needs [in]")
    if (p.string or p.wstring) and sized:
        raise EdlError(f"{where}: [string] excludes size=, count= and sizefunc=")
    # edger8r before SDK 2.5 took [string] on any pointer (strlen + 1 bytes);
    # so does vsgx, but not on a pointer to pointers.
    if (p.string or p.wstring) and ctype.pointers != 1:
        raise EdlError(f"{where}: [string] and [wstring] need a pointer to characters, not "
                       f"{ctype}")
    if sized and not direction:
        raise EdlError(f"{where}: size=, count= and sizefunc= need a direction")
    if p.size is not None and p.sizefunc is not None:
        raise EdlError(f"{where}: size= excludes sizefunc=")
    if p.sizefunc is not None and not p.direction_in:
        raise EdlError(f"{where}: sizefunc= needs [in] (edger8r 1.x measures the caller's "
                       "buffer)")
    if ctype.dims and (sized or p.isary):
        raise EdlError(f"{where}: an explicitly declared array takes no size, count or "
                       "[isary]")
    if ctype.dims and ctype.is_pointer:
        raise EdlError(f"{where}: arrays of pointers are not allowed")
    if ctype.pointers == 1 and ctype.base == "void" and direction and p.size is None \
            and p.sizefunc is None:
        raise EdlError(f"{where}: a void pointer with a direction needs size=")
    if p.readonly and p.direction_out:
        raise EdlError(f"{where}: a readonly (const) pointer cannot be [out]")
    for ref in (p.size, p.count):
        if ref is not None:
            _check_number(source, f"{function}({p.name})", ref)
    if p.size is not None and p.count is not None and _is_number(p.size) \
            and _is_number(p.count) and int(p.size, 0) * int(p.count, 0) > MAX_BUFFER:
        raise EdlError(f"{where}: size × count is more than {MAX_BUFFER} bytes")


_NOT_INTEGER = ("float", "double", "long double")


def _check_references(source: str, function: str, params: list[Param]) -> None:
    """size= and count= name an integer parameter of the same function."""
    by_name: dict[str, Param] = {}
    for param in params:
        if param.name in by_name:
            raise EdlError(f"{source}: {function}() has two parameters named {param.name!r}")
        by_name[param.name] = param
    for param in params:
        for ref in param.references:
            target = by_name.get(ref)
            if target is None:
                raise EdlError(f"{source}: {function}({param.name}): size/count {ref!r} is "
                               "neither a number nor a parameter")
            if target.pointer_like or target.type.base in _NOT_INTEGER or \
                    target.type.base.startswith(("struct ", "union ")):
                raise EdlError(f"{source}: {function}({param.name}): size/count {ref!r} is "
                               f"not an integer ({target.type})")


def parse_edl_text(text: str, source: str = "<edl>", path: Path | None = None) -> EdlFile:
    edl = EdlFile(path or Path(source))
    _Parser(tokenize(preprocess(text), source), source).parse(edl)
    return edl


def parse_edl_file(path: Path) -> EdlFile:
    try:
        text = path.read_text()
    except (OSError, UnicodeDecodeError) as exc:
        raise EdlError(f"cannot read EDL {path}: {exc}") from None
    return parse_edl_text(text, str(path), path)


def load_edl(path: str | Path, search_paths: list[Path] | None = None) -> Enclave:
    """Parse an EDL and its imports (searched beside it, in ``search_paths``,
    then in vsgx's own rendering of the SDK's standard EDLs)."""
    root = Path(path)
    paths = [root.parent, *(search_paths or []), STANDARD_EDL_DIR]
    cache: dict[Path, EdlFile] = {}

    def find(name: str, beside: Path) -> Path:
        for directory in [beside.parent, *paths]:
            candidate = directory / name
            if candidate.is_file():
                return candidate.resolve()
        raise EdlError(f"{beside}: cannot find imported EDL {name!r}")

    def load(file: Path, stack: tuple[Path, ...]) -> EdlFile:
        if file in stack:
            raise EdlError(f"{file}: circular import")
        if file not in cache:
            cache[file] = parse_edl_file(file)
        return cache[file]

    def collect(file: Path, stack: tuple[Path, ...]) -> tuple[list[Function], list[Function]]:
        edl = load(file, stack)
        trusted, untrusted = list(edl.trusted), list(edl.untrusted)
        for name, selected in edl.imports:
            sub_t, sub_u = collect(find(name, file), (*stack, file))
            if selected is not None:
                wanted = set(selected)
                missing = wanted - {f.name for f in sub_t + sub_u}
                if missing:
                    raise EdlError(f"{file}: {name} has no function(s) "
                                   f"{', '.join(sorted(missing))}")
                sub_t = [f for f in sub_t if f.name in wanted]
                sub_u = [f for f in sub_u if f.name in wanted]
            trusted += sub_t
            untrusted += sub_u
        return _unique(trusted), _unique(untrusted)

    trusted, untrusted = collect(root.resolve(), ())
    composites: dict[str, Composite] = {}
    enums: dict[str, int] = {}
    enum_types: set[str] = set()
    for edl in cache.values():
        composites.update(edl.composites)
        enums.update(edl.enums)
        enum_types |= edl.enum_types
    ecall_names = {f.name for f in trusted}
    for function in untrusted:
        for allowed in function.allow:
            if allowed not in ecall_names:
                raise EdlError(f"{function.source}: {function.name} allows unknown ECALL "
                               f"{allowed!r}")
    return Enclave(trusted, untrusted, composites, enums, enum_types, list(cache))


def _unique(functions: list[Function]) -> list[Function]:
    seen: set[str] = set()
    out = []
    for function in functions:
        if function.name not in seen:
            seen.add(function.name)
            out.append(function)
    return out
