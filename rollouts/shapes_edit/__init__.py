"""Shapes editing: instructions with an exact checker on the shapes world (`edits`), train / held-out rows
(`prompts`), and the small editing generator (`preset`). Built on `rollouts/shapes/` without changing it."""
